//! The technician's status page in a real headless Chromium (Debian's, over chromedriver): what
//! a technician sees on a laptop and on a phone, live, without reloading.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use outpost_e2e::broker::Pki;
use outpost_e2e::browser::Browser;
use outpost_e2e::{NodeSpec, Proc, Site, bin, free_port, http_get_json, wait_for};
use serde_json::Value;

/// `outpost demo` with `nodes` simulated nodes and the simulated meter.
fn demo(nodes: usize) -> (Proc, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(bin("outpost"));
    cmd.args(["demo", "--nodes", &nodes.to_string(), "--modbus"])
        .args(["--listen", &addr.to_string()]);
    let demo = Proc::spawn("demo", &mut cmd).unwrap();
    wait_for(Duration::from_secs(30), "the demo's API", || {
        http_get_json(addr, "/api/v1/status").ok()
    })
    .unwrap();
    (demo, addr)
}

/// The rows of table `id` as the page shows them: `{id, state, cells}`.
const ROWS: &str = "return [...document.querySelectorAll('#ID tbody tr')].map((tr) => ({
    id: tr.dataset.id, state: tr.dataset.state, cells: [...tr.cells].map((c) => c.textContent) }));";

fn rows(browser: &Browser, table: &str) -> Vec<Value> {
    match browser.eval(&ROWS.replace("ID", table)).unwrap() {
        Value::Array(rows) => rows,
        other => panic!("rows of #{table}: {other}"),
    }
}

#[test]
fn the_page_lists_every_node_with_its_firmware_and_the_meter_and_fits_a_phone() {
    let (mut demo, addr) = demo(4);
    // Tall enough for the whole page in one screenshot.
    let browser = Browser::start(1280, 1500).unwrap();
    browser.goto(&format!("http://{addr}/")).unwrap();
    browser
        .wait_eval(
            Duration::from_secs(30),
            "four nodes and a polled meter on the page",
            "const n = document.querySelectorAll('#nodes tbody tr[data-state=online]').length;
             const m = document.querySelector('#devices tbody tr[data-id=demo-meter][data-state=online]');
             return n === 4 && m !== null;",
        )
        .unwrap();
    let nodes = rows(&browser, "nodes");
    let uids: Vec<&str> = nodes.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        uids,
        [
            "de30000000000001",
            "de30000000000002",
            "de30000000000003",
            "de30000000000004"
        ]
    );
    for row in &nodes {
        // uid, state, port, firmware, hw rev, lot: as the nodes announced themselves.
        assert_eq!(row["cells"][3], "0.1.0", "{row}");
        assert_eq!(row["cells"][5], "DEMO-LOT-1", "{row}");
    }
    let verdict = browser
        .eval("return document.getElementById('verdict-headline').textContent")
        .unwrap();
    assert_eq!(verdict, "All good");
    // The gateway's own health (docs/health.md): its disk and its modem, in words.
    let health = browser
        .wait_eval(
            Duration::from_secs(30),
            "the gateway health panel filled",
            "const d = document.getElementById('health-disk').textContent;
             const m = document.getElementById('health-modem').textContent;
             return d.includes('free') && m.startsWith('none (') ? d + ' | ' + m : null;",
        )
        .unwrap();
    assert!(health.as_str().is_some(), "{health}");

    // Sorting by uid twice turns the order around; filtering keeps the matching row only.
    browser
        .eval("document.querySelector('#nodes th[data-key=uid]').click(); return null;")
        .unwrap();
    let first = rows(&browser, "nodes")[0]["id"].clone();
    assert_eq!(first, "de30000000000004", "descending after a second click");
    browser
        .eval(
            "const f = document.getElementById('nodes-filter'); f.value = '0003';
             f.dispatchEvent(new Event('input')); return null;",
        )
        .unwrap();
    let filtered: Vec<Value> = rows(&browser, "nodes")
        .into_iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(filtered, ["de30000000000003"]);
    browser
        .eval(
            "const f = document.getElementById('nodes-filter'); f.value = '';
             f.dispatchEvent(new Event('input')); return null;",
        )
        .unwrap();

    let png = browser.screenshot().unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    save_screenshot("web-status.png", &png);

    // A phone held upright, at night: nothing may push the page sideways (wide tables scroll in
    // their box).
    browser.set_viewport(360, 740).unwrap();
    browser.prefer_dark().unwrap();
    browser.goto(&format!("http://{addr}/")).unwrap();
    browser
        .wait_eval(
            Duration::from_secs(15),
            "the page filled on a phone",
            "return document.querySelectorAll('#nodes tbody tr').length === 4;",
        )
        .unwrap();
    let widths = browser
        .eval(
            "return [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth];",
        )
        .unwrap();
    let [page, body, viewport] = [0, 1, 2].map(|i| widths[i].as_u64().unwrap());
    assert_eq!(viewport, 360, "{widths}");
    assert!(
        page <= viewport && body <= viewport,
        "sideways overflow on a 360 px phone: {widths}"
    );
    save_screenshot("web-status-phone.png", &browser.screenshot().unwrap());
    drop(browser);
    demo.terminate(Duration::from_secs(10)).unwrap();
}

/// Screenshots land in target/web/; with `OUTPOST_DOCS_SCREENSHOTS=1` also in docs/ (the ones
/// docs/web.md shows are made this way).
fn save_screenshot(name: &str, png: &[u8]) {
    let root = outpost_e2e::workspace_dir();
    let dir = root.join("target/web");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
    if std::env::var_os("OUTPOST_DOCS_SCREENSHOTS").is_some() {
        std::fs::write(root.join("docs").join(name), png).unwrap();
    }
}

/// A lot of 16 bytes (the most a node may send) that is markup if the page ever parses it.
const MARKUP_LOT: &str = "<b id=injected>";

#[test]
fn a_node_whose_line_goes_silent_turns_offline_on_the_page_without_a_reload() {
    let specs: Vec<NodeSpec> = (0..2)
        .map(|i| NodeSpec {
            rate_hz: 5.0,
            port_config: "offline_after = \"4s\"".into(),
            // A node's strings are whatever it says: markup must show as text, never as markup.
            sim_args: vec!["--lot".into(), MARKUP_LOT.into()],
            ..NodeSpec::new(i)
        })
        .collect();
    let mut site = Site::new(specs).unwrap();
    site.start_gateway().unwrap();
    let browser = Browser::start(1280, 900).unwrap();
    browser.goto(&format!("http://{}/", site.api)).unwrap();
    browser
        .wait_eval(
            Duration::from_secs(30),
            "both nodes online",
            "return document.querySelectorAll('#nodes tbody tr[data-state=online]').length === 2;",
        )
        .unwrap();
    let lots: Vec<Value> = rows(&browser, "nodes")
        .into_iter()
        .map(|r| r["cells"][5].clone())
        .collect();
    assert_eq!(
        lots,
        [MARKUP_LOT, MARKUP_LOT],
        "the lot shown as the node sent it"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('injected') === null;")
            .unwrap(),
        true,
        "a node's lot became markup"
    );
    // A mark on this page load: a reload would lose it.
    browser
        .eval("window.outpostTestMark = 1; return null;")
        .unwrap();
    let silent = site.specs[1].uid.clone();
    site.nodes[1].take().unwrap().kill_hard();
    // Its timeout (4 s), the store's commit and one refresh (2 s): well inside the bound, and a
    // page refreshing at its hidden pace (30 s) would miss it.
    browser
        .wait_eval(
            Duration::from_secs(20),
            "the silent node offline",
            &format!(
                "const tr = document.querySelector('#nodes tbody tr[data-id=\"{silent}\"]');
                 return tr !== null && tr.dataset.state === 'offline';"
            ),
        )
        .unwrap();
    assert_eq!(
        browser
            .eval("return window.outpostTestMark === 1;")
            .unwrap(),
        true,
        "the page was reloaded"
    );
    let states: Vec<(Value, Value)> = rows(&browser, "nodes")
        .into_iter()
        .map(|r| (r["id"].clone(), r["state"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (
                Value::from(site.specs[0].uid.clone()),
                Value::from("online")
            ),
            (Value::from(silent), Value::from("offline")),
        ]
    );
    let headline = browser
        .eval("return document.getElementById('verdict-headline').textContent")
        .unwrap();
    assert_eq!(headline, "1 of 2 nodes offline");
}

#[test]
fn an_uplink_that_cannot_connect_shows_in_the_verdict_and_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let files = pki.client("e2e-site").unwrap();
    // Nothing listens there: every attempt is refused.
    let closed = free_port();
    let config = format!(
        "[uplink]\nbatch_interval = \"1s\"\n\n[uplink.mqtt]\nbroker = \"127.0.0.1:{closed}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    );
    let specs = vec![NodeSpec {
        rate_hz: 20.0,
        ..NodeSpec::new(0)
    }];
    let mut site = Site::with_config(specs, &config).unwrap();
    site.start_gateway().unwrap();
    let browser = Browser::start(1280, 900).unwrap();
    browser.goto(&format!("http://{}/", site.api)).unwrap();
    let seen = browser
        .wait_eval(
            Duration::from_secs(30),
            "the verdict and the chart telling of the waiting batches",
            "const v = document.getElementById('verdict');
             const w = document.querySelector('#budget-chart rect.waiting');
             const h = document.getElementById('verdict-headline').textContent;
             if (!w || !h.startsWith('Uplink') || !h.includes('waiting')) return null;
             return { level: v.className, headline: h, state: document.getElementById('uplink-state').textContent,
                      height: Number(w.getAttribute('height')), caption: document.getElementById('budget-caption').textContent };",
        )
        .unwrap();
    assert_eq!(seen["level"], "verdict attention", "{seen}");
    assert!(
        seen["state"].as_str().unwrap().starts_with("Down"),
        "{seen}"
    );
    assert!(seen["height"].as_u64().unwrap() >= 2, "{seen}");
    assert!(
        seen["caption"].as_str().unwrap().contains("waiting"),
        "{seen}"
    );
}

const PASSWORD: &str = "correct horse battery";

/// `fetch` in the page: `{status, csrf}` of a POST to `path` with a JSON body and `token`.
fn post(browser: &Browser, path: &str, token: &str, body: &str) -> Value {
    browser
        .eval_async(&format!(
            "const done = arguments[arguments.length - 1];
             fetch('{path}', {{ method: 'POST', credentials: 'same-origin',
                 headers: {{ 'Content-Type': 'application/json', 'X-CSRF-Token': '{token}' }},
                 body: '{body}' }})
               .then((r) => done({{ status: r.status, csrf: r.headers.get('X-CSRF-Token') }}))
               .catch((e) => done({{ error: String(e) }}));"
        ))
        .unwrap()
}

/// A page on another origin whose form posts to the gateway's "send now" as soon as it loads:
/// a cross-site request forgery, served from 127.0.0.1 on a port of its own.
fn forging_site(target: SocketAddr) -> SocketAddr {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let page = format!(
        "<!doctype html><form id=f method=post enctype=text/plain action=\"http://{target}/api/v1/actions/send-now\">\
         <input name='{{\"x\":\"' value='\"}}'></form><script>document.getElementById('f').submit()</script>"
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

/// `outpost technician set-password` for the site, as an installer runs it.
fn set_technician_password(site: &Site) {
    let mut set = Command::new(bin("outpost"));
    set.args(["technician", "set-password", "--config"])
        .arg(site.config_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = set.spawn().unwrap();
    {
        use std::io::Write as _;
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    }
    assert!(child.wait().unwrap().success(), "set-password failed");
}

/// Logs in through the page's form.
fn log_in(browser: &Browser) {
    browser
        .wait_eval(
            Duration::from_secs(20),
            "the login form",
            "return !document.getElementById('login-form').hidden;",
        )
        .unwrap();
    browser
        .eval(&format!(
            "document.getElementById('login-password').value = '{PASSWORD}';
             document.querySelector('#login-form button').click(); return null;"
        ))
        .unwrap();
    browser
        .wait_eval(
            Duration::from_secs(20),
            "logged in",
            "return !document.getElementById('actions').hidden;",
        )
        .unwrap();
}

#[test]
fn a_technician_lets_a_waiting_node_in_from_the_page_and_revokes_it() {
    let specs = vec![NodeSpec {
        rate_hz: 5.0,
        ..NodeSpec::new(0)
    }];
    let uid = specs[0].uid.clone();
    let mut site = Site::with_config(specs, "[enrollment]\npolicy = \"window\"\n").unwrap();
    set_technician_password(&site);
    site.start_gateway().unwrap();
    let browser = Browser::start(1280, 900).unwrap();
    browser.goto(&format!("http://{}/", site.api)).unwrap();
    // The node proved its key and waits: the page says so, with its uid.
    browser
        .wait_eval(
            Duration::from_secs(30),
            "the waiting node on the page",
            &format!(
                "const t = document.getElementById('enrollment-waiting').textContent;
                 return t.includes('{uid}') && t.includes('waiting for enrollment') ? t : null;"
            ),
        )
        .unwrap();
    log_in(&browser);
    browser
        .wait_eval(
            Duration::from_secs(10),
            "the enrollment button",
            "return !document.getElementById('enroll-actions').hidden;",
        )
        .unwrap();
    browser
        .eval("document.getElementById('enroll-open').click(); return null;")
        .unwrap();
    wait_for(Duration::from_secs(30), "the node's readings", || {
        let seqs = site.stored_seqs().ok()?;
        seqs.iter()
            .any(|(u, s)| *u == uid && s.len() >= 5)
            .then_some(())
    })
    .unwrap();
    browser
        .wait_eval(
            Duration::from_secs(20),
            "the window shown open and nobody waiting",
            "const t = document.getElementById('enrollment-state').textContent;
             return t.includes('window open') && document.getElementById('enrollment-waiting').children.length === 0 ? t : null;",
        )
        .unwrap();
    // Revoke it from the form (the page asks first).
    browser
        .eval(&format!(
            "window.confirm = () => true;
             document.getElementById('revoke-uid').value = '{uid}';
             document.querySelector('#revoke-form button').click(); return null;"
        ))
        .unwrap();
    browser
        .wait_eval(
            Duration::from_secs(20),
            "the node shown revoked",
            "const row = document.querySelector('#nodes tbody tr');
             return row && row.textContent.includes('revoked') ? row.textContent : null;",
        )
        .unwrap();
    let row = site.get("/api/v1/nodes").unwrap()["nodes"][0].clone();
    assert!(row["revoked_ms"].is_i64(), "{row}");
}

#[test]
fn actions_need_the_technician_login_and_a_fresh_csrf_token_and_wrong_passwords_are_throttled() {
    // Node 0 reports; node 1's port admits no newcomer, so it is refused and an alert fires.
    let specs = vec![
        NodeSpec {
            rate_hz: 5.0,
            ..NodeSpec::new(0)
        },
        NodeSpec {
            rate_hz: 5.0,
            port_config: "newcomers_burst = 0\nnewcomers_per_hour = 0".into(),
            ..NodeSpec::new(1)
        },
    ];
    // The demo meter, served in this process: its map declares no point writable.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let meter_addr = runtime
        .block_on(outpost::demo::meter::serve(
            std::sync::Arc::new(outpost::demo::meter::demo_map().unwrap()),
            1,
            shutdown.clone(),
        ))
        .unwrap();
    let map = outpost_e2e::workspace_dir().join("config/devices/eastron-sdm630.toml");
    // Batches ten minutes apart: only "send now" seals one after the run's first.
    let config = format!(
        "[uplink]\nbatch_interval = \"10m\"\n\n[[modbus.device]]\nname = \"hall-meter\"\nmap = \"{}\"\n\
         transport = \"tcp\"\naddress = \"{meter_addr}\"\npoll_interval = \"1s\"\n",
        map.display()
    );
    let mut site = Site::with_config(specs, &config).unwrap();
    set_technician_password(&site);
    let stored = std::fs::read_to_string(site.dir.path().join("data/technician.argon2")).unwrap();
    assert!(
        stored.starts_with("$argon2id$") && !stored.contains(PASSWORD),
        "{stored}"
    );

    site.start_gateway().unwrap();
    let sealed = |site: &Site| {
        site.get("/api/v1/status").unwrap()["store"]["batches_sealed"]
            .as_u64()
            .unwrap()
    };
    wait_for(Duration::from_secs(30), "the run's first batch", || {
        (sealed(&site) >= 1).then_some(())
    })
    .unwrap();
    let browser = Browser::start(1280, 900).unwrap();
    browser.goto(&format!("http://{}/", site.api)).unwrap();
    browser
        .wait_eval(
            Duration::from_secs(20),
            "the login form",
            "return !document.getElementById('login-form').hidden;",
        )
        .unwrap();

    // Without a login: refused.
    let refused = post(&browser, "/api/v1/actions/send-now", "", "{}");
    assert_eq!(refused["status"], 403, "{refused}");

    // Logged in through the page's form, the page's button works.
    log_in(&browser);
    let before = sealed(&site);
    let token_before = browser.eval("return csrf;").unwrap();
    browser
        .eval("document.getElementById('send-now').click(); return null;")
        .unwrap();
    wait_for(Duration::from_secs(20), "a batch sealed on request", || {
        (sealed(&site) > before).then_some(())
    })
    .unwrap();
    let message = browser
        .wait_eval(
            Duration::from_secs(10),
            "the page's answer",
            "const t = document.getElementById('technician-message').textContent;
             return t.startsWith('Sealing') ? t : null;",
        )
        .unwrap();
    assert!(
        message.as_str().unwrap().contains("uplink sends it"),
        "{message}"
    );

    // The spent token, replayed: refused; the current one still works once.
    let replayed = post(
        &browser,
        "/api/v1/actions/send-now",
        token_before.as_str().unwrap(),
        "{}",
    );
    assert_eq!(replayed["status"], 403, "{replayed}");
    let current = browser.eval("return csrf;").unwrap();
    assert_ne!(current, token_before);
    let fresh = post(
        &browser,
        "/api/v1/actions/send-now",
        current.as_str().unwrap(),
        "{}",
    );
    assert_eq!(fresh["status"], 200, "{fresh}");
    let again = post(
        &browser,
        "/api/v1/actions/send-now",
        current.as_str().unwrap(),
        "{}",
    );
    assert_eq!(again["status"], 403, "{again}");
    // The page goes on with the token the last allowed action brought.
    browser
        .eval(&format!(
            "csrf = '{}'; return null;",
            fresh["csrf"].as_str().unwrap()
        ))
        .unwrap();

    // Silencing the refused newcomer's alert: it leaves the verdict, stays listed as silenced.
    browser
        .wait_eval(
            Duration::from_secs(30),
            "the alert with its silence button",
            "return document.querySelector('#alerts li[data-kind=newcomers_refused] button') !== null;",
        )
        .unwrap();
    browser
        .eval("document.querySelector('#alerts li[data-kind=newcomers_refused] button').click(); return null;")
        .unwrap();
    browser
        .wait_eval(
            Duration::from_secs(20),
            "the alert silenced",
            "const li = document.querySelector('#alerts li[data-kind=newcomers_refused]');
             return li !== null && li.className === 'silenced'
                 && !document.getElementById('verdict').textContent.includes('alert');",
        )
        .unwrap();

    // A write is checked by the device's map: a point not declared writable, an unknown device.
    let token = browser.eval("return csrf;").unwrap();
    let not_writable = post(
        &browser,
        "/api/v1/actions/modbus-write",
        token.as_str().unwrap(),
        "{\"device\": \"hall-meter\", \"point\": \"l1_voltage\", \"value\": 230.1}",
    );
    assert_eq!(not_writable["status"], 400, "{not_writable}");
    let unknown = post(
        &browser,
        "/api/v1/actions/modbus-write",
        not_writable["csrf"].as_str().unwrap(),
        "{\"device\": \"no-such-meter\", \"point\": \"x\", \"value\": 1}",
    );
    assert_eq!(unknown["status"], 404, "{unknown}");

    // A page on another origin, in the same logged-in browser, posts a form to the gateway.
    let forging = forging_site(site.api);
    let sealed_before_forgery = sealed(&site);
    browser.goto(&format!("http://{forging}/")).unwrap();
    let answer = browser
        .wait_eval(
            Duration::from_secs(20),
            "the gateway's answer to the forged request",
            "return location.pathname === '/api/v1/actions/send-now' ? document.body.textContent : null;",
        )
        .unwrap();
    assert!(
        answer.as_str().unwrap().contains("another site"),
        "{answer}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sealed(&site),
        sealed_before_forgery,
        "the forged request sealed a batch"
    );

    // Wrong passwords: five are answered, the sixth within the minute is throttled.
    browser.goto(&format!("http://{}/", site.api)).unwrap();
    let statuses: Vec<Value> = (0..6)
        .map(|_| {
            post(
                &browser,
                "/api/v1/login",
                "",
                "{\"password\": \"wrong horse battery\"}",
            )["status"]
                .clone()
        })
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    drop(browser);
    drop(site);
    shutdown.cancel();
}

/// Runs a shipped tool; its output when it fails.
fn run_tool(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A simulator image of `version` (48 KiB), signed for hardware revision 1 with `key`.
fn signed_image(dir: &std::path::Path, version: &str, key: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join(format!("node-{version}.bin"));
    run_tool(
        Command::new(bin("outpost-node-sim"))
            .args(["make-image", "--version", version, "--size", "48K"])
            .arg(&path),
    );
    run_tool(
        Command::new(bin("outpost"))
            .args(["firmware", "sign", "--key"])
            .arg(key)
            .args(["--version", version, "--hw-rev", "1"])
            .arg(&path),
    );
    path
}

/// Chooses an image and its signature in the page's upload form and sends them.
fn upload(browser: &Browser, image: &std::path::Path) {
    let sig = std::path::PathBuf::from(format!("{}.sig", image.display()));
    browser.choose_file("#firmware-image", image).unwrap();
    browser.choose_file("#firmware-sig", &sig).unwrap();
    browser
        .eval(
            "document.querySelector('#firmware-upload button[type=submit]').click(); return null;",
        )
        .unwrap();
}

#[test]
fn a_technician_uploads_node_firmware_and_follows_its_rollout_to_every_node_on_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let stranger = tmp.path().join("stranger");
    for dir in [&keys, &stranger] {
        run_tool(
            Command::new(bin("outpost"))
                .args(["firmware", "keygen", "--out"])
                .arg(dir),
        );
    }
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let factory = signed_image(&images, "1.0.0", &keys.join("firmware.key"));
    let next = signed_image(&images, "1.1.0", &keys.join("firmware.key"));
    // Signed by another fleet's key: the gateway must refuse it, and the page say why.
    let forged = signed_image(&images, "1.3.0", &stranger.join("firmware.key"));

    // Two nodes booting from flash files with the factory image, at 921,600 baud.
    let specs: Vec<NodeSpec> = (0..2)
        .map(|i| {
            let flash = tmp.path().join(format!("flash{i}.bin"));
            run_tool(
                Command::new(bin("outpost-node-sim"))
                    .arg("make-flash")
                    .arg("--image")
                    .arg(&factory)
                    .arg(&flash),
            );
            NodeSpec {
                rate_hz: 10.0,
                sim_args: vec![
                    "--flash".into(),
                    flash.display().to_string(),
                    "--fleet-key".into(),
                    keys.join("firmware.pub").display().to_string(),
                    "--baud".into(),
                    "921600".into(),
                ],
                port_config: "baud = 921600".into(),
                ..NodeSpec::new(i)
            }
        })
        .collect();
    let uids: Vec<String> = specs.iter().map(|s| s.uid.clone()).collect();
    let config = format!(
        "[ota]\nfirmware_keys = [\"{}\"]\n",
        keys.join("firmware.pub").display()
    );
    let mut site = Site::with_config(specs, &config).unwrap();
    set_technician_password(&site);
    // The factory image is in the library already (installed with the gateway).
    run_tool(
        Command::new(bin("outpost"))
            .args(["firmware", "add", "--config"])
            .arg(site.config_path())
            .arg(&factory),
    );
    site.start_gateway().unwrap();

    let browser = Browser::start(1280, 1400).unwrap();
    browser.goto(&format!("http://{}/", site.api)).unwrap();
    // Before any login: both nodes take updates and run the factory image; the library shows it.
    browser
        .wait_eval(
            Duration::from_secs(30),
            "both nodes in the firmware panel, on 1.0.0, and the library",
            "const rows = [...document.querySelectorAll('#ota-nodes tbody tr')];
             const lib = document.querySelector('#firmware-library tbody tr[data-file=\"node-1.0.0.bin\"]');
             return rows.length === 2 && rows.every((r) => r.dataset.version === '1.0.0') && lib !== null;",
        )
        .unwrap();
    let lib = browser
        .eval("return [...document.querySelector('#firmware-library tbody tr').cells].map((c) => c.textContent);")
        .unwrap();
    let sha = sha256_hex(&std::fs::read(&factory).unwrap());
    assert_eq!(lib[0], "node-1.0.0.bin", "{lib}");
    assert_eq!(lib[1], "1.0.0", "{lib}");
    assert_eq!(lib[2], "1", "{lib}");
    assert_eq!(lib[3], "49 kB", "{lib}");
    assert_eq!(lib[4], &sha[..12], "{lib}");
    assert_eq!(lib[5], "1.0.0", "{lib}");
    assert!(
        lib[6]
            .as_str()
            .unwrap()
            .starts_with("every hw 1 node runs it"),
        "{lib}"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('firmware-actions').hidden;")
            .unwrap(),
        true,
        "the upload and rollout forms shown without a login"
    );

    log_in(&browser);
    browser
        .wait_eval(
            Duration::from_secs(10),
            "the firmware forms",
            "return !document.getElementById('firmware-actions').hidden;",
        )
        .unwrap();

    // A good image goes into the library.
    upload(&browser, &next);
    let added = browser
        .wait_eval(
            Duration::from_secs(20),
            "the image added and listed",
            "const m = document.getElementById('firmware-message').textContent;
             const row = document.querySelector('#firmware-library tbody tr[data-file=\"node-1.1.0.bin\"]');
             return m.startsWith('Added') && row !== null && row.dataset.refused === 'no' ? m : null;",
        )
        .unwrap();
    assert_eq!(
        added,
        "Added node-1.1.0.bin: version 1.1.0, hw rev 1, 49 kB."
    );
    // A forged one is refused, with the reason in the panel.
    upload(&browser, &forged);
    let refusal = browser
        .wait_eval(
            Duration::from_secs(20),
            "the forged image's refusal",
            "const m = document.getElementById('firmware-message');
             return m.className === 'refusal' ? { text: m.textContent, kind: m.dataset.kind } : null;",
        )
        .unwrap();
    assert_eq!(refusal["kind"], "bad-signature", "{refusal}");
    let message = refusal["text"].as_str().unwrap();
    let reason = message
        .strip_prefix("Upload of node-1.3.0.bin refused: refused (bad-signature): ")
        .unwrap_or_else(|| panic!("{message}"));
    assert!(reason.len() > 10, "no reason given: {message}");
    assert_eq!(
        browser
            .eval("return document.querySelector('#firmware-library tbody tr[data-file=\"node-1.3.0.bin\"]');")
            .unwrap(),
        Value::Null,
        "the forged image listed"
    );
    assert!(
        !site
            .dir
            .path()
            .join("data/firmware/node-1.3.0.bin")
            .exists(),
        "the forged image left in the library"
    );

    // A rollout from the form: one canary, then the rest; short soak and confirm times.
    browser
        .eval(
            "const set = (id, v) => { document.getElementById(id).value = v; };
             set('rollout-artifact', 'node-1.1.0.bin'); set('rollout-canary', '1');
             set('rollout-waves', '100%'); set('rollout-soak', '2s'); set('rollout-confirm', '6s');
             document.querySelector('#rollout-form button[type=submit]').click(); return null;",
        )
        .unwrap();
    // Follow it on the page: every phase a node row shows until every node is finalized on 1.1.0
    // with a full progress bar.
    let mut phases = std::collections::BTreeSet::new();
    let mut halt_button_seen = false;
    let end = wait_for(Duration::from_secs(60), "every node finalized on the page", || {
        let seen = browser
            .eval(
                "return { rows: [...document.querySelectorAll('#ota-nodes tbody tr')].map((r) => {
                     const p = r.querySelector('progress');
                     return { id: r.dataset.id, phase: r.dataset.phase, version: r.dataset.version,
                              value: p.value, max: p.max, cells: [...r.cells].map((c) => c.textContent) }; }),
                   state: document.getElementById('rollout-state').dataset.state || null,
                   line: document.getElementById('rollout-state').textContent,
                   halt: !document.getElementById('rollout-halt-actions').hidden,
                   message: document.getElementById('firmware-message').textContent };",
            )
            .ok()?;
        let rows = seen["rows"].as_array()?;
        for row in rows {
            phases.insert(row["phase"].as_str()?.to_owned());
        }
        halt_button_seen |= seen["halt"] == true;
        let finished = seen["state"] == "done"
            && rows.len() == 2
            && rows
                .iter()
                .all(|r| r["phase"] == "finalized" && r["version"] == "1.1.0");
        if finished {
            Some(seen)
        } else {
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    })
    .unwrap();
    assert!(
        end["message"]
            .as_str()
            .unwrap()
            .starts_with("Rollout 1 of 1.1.0 started"),
        "{end}"
    );
    assert!(
        phases
            .iter()
            .any(|p| ["transferring", "installing", "trial", "confirmed"].contains(&p.as_str())),
        "the page never showed a node on its way: {phases:?}"
    );
    assert!(halt_button_seen, "no Halt button while the rollout ran");
    for row in end["rows"].as_array().unwrap() {
        assert_eq!(row["value"], row["max"], "{row}");
        assert_eq!(row["max"], 49152.0, "{row}");
        assert_eq!(row["cells"][3], "49 kB of 49 kB", "{row}");
        assert!(
            uids.contains(&row["id"].as_str().unwrap().to_owned()),
            "{row}"
        );
    }
    let line = end["line"].as_str().unwrap();
    assert!(
        line.contains("done") && line.contains("2 of 2 nodes updated"),
        "{line}"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('rollout-halt-actions').hidden;")
            .unwrap(),
        true,
        "a Halt button after the rollout ended"
    );
    // The gateway agrees.
    let view = site.get("/api/v1/rollout").unwrap();
    assert_eq!(view["rollout"]["state"], "done", "{view:#}");
    for node in view["nodes"].as_array().unwrap() {
        assert_eq!(node["fw"], "1.1.0", "{node}");
    }
    // FINALIZE raised the nodes' floor: the factory image is now below it, and the library says so.
    browser
        .wait_eval(
            Duration::from_secs(45),
            "the factory image shown below the floor",
            "const row = document.querySelector('#firmware-library tbody tr[data-file=\"node-1.0.0.bin\"]');
             return row && row.dataset.refused === 'yes' && row.cells[6].textContent.startsWith('below-floor') ? true : null;",
        )
        .unwrap();

    // Rolling the factory image out again is refused before any transfer, and the panel says why.
    browser
        .eval(
            "document.getElementById('rollout-artifact').value = 'node-1.0.0.bin';
             document.querySelector('#rollout-form button[type=submit]').click(); return null;",
        )
        .unwrap();
    let refusal = browser
        .wait_eval(
            Duration::from_secs(20),
            "the rollout's refusal",
            "const m = document.getElementById('firmware-message');
             return m.className === 'refusal' && m.textContent.startsWith('Rollout refused')
                 ? { text: m.textContent, kind: m.dataset.kind } : null;",
        )
        .unwrap();
    assert_eq!(refusal["kind"], "below-floor", "{refusal}");
    assert!(
        refusal["text"].as_str().unwrap().ends_with("[below-floor]")
            && refusal["text"].as_str().unwrap().len()
                > "Rollout refused: [below-floor]".len() + 10,
        "{refusal}"
    );

    browser
        .eval("document.getElementById('firmware-section').scrollIntoView(); return null;")
        .unwrap();
    save_screenshot("web-firmware.png", &browser.screenshot().unwrap());

    // On a phone, logged in, with every table filled: nothing pushes the page sideways.
    browser.set_viewport(360, 740).unwrap();
    let widths = browser
        .eval("return [document.documentElement.scrollWidth, window.innerWidth];")
        .unwrap();
    assert!(
        widths[0].as_u64().unwrap() <= widths[1].as_u64().unwrap(),
        "sideways overflow on a phone: {widths}"
    );
    browser
        .eval("document.getElementById('firmware-section').scrollIntoView(); return null;")
        .unwrap();
    save_screenshot("web-firmware-phone.png", &browser.screenshot().unwrap());
    drop(browser);
}

fn sha256_hex(bytes: &[u8]) -> String {
    // `sha256sum`, as a technician would check it.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let out = Command::new("sha256sum").arg(tmp.path()).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// What the page's files may not do, checked in the files themselves: markup from strings (the
/// page writes every value with textContent), inline script or handlers (the CSP would block
/// them, silently), and form fields without a label a screen reader can announce.
#[test]
fn the_page_builds_no_markup_from_strings_and_labels_every_field() {
    let web = outpost_e2e::workspace_dir().join("gateway/web");
    let script = std::fs::read_to_string(web.join("app.js")).unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "createContextualFragment",
        "eval(",
        "new Function",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
    let html = std::fs::read_to_string(web.join("index.html")).unwrap();
    let lower = html.to_lowercase();
    assert!(!lower.contains(" style="), "an inline style attribute");
    assert!(!lower.contains("<style"), "an inline style element");
    assert_eq!(
        lower.matches("<script").count(),
        1,
        "one script, and it is app.js"
    );
    assert!(lower.contains("<script src=\"/app.js\" defer></script>"));
    for handler in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " onchange=",
        " oninput=",
    ] {
        assert!(!lower.contains(handler), "an inline handler {handler}");
    }
    // Every input and select: a <label for=its id>, an aria-label, or inside a <label>.
    let mut fields = 0;
    for tag in ["<input", "<select"] {
        let mut from = 0;
        while let Some(at) = html[from..].find(tag) {
            let start = from + at;
            let end = start + html[start..].find('>').unwrap();
            let element = &html[start..=end];
            from = end;
            fields += 1;
            let id = element
                .split("id=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next());
            let labelled_for = id.is_some_and(|id| html.contains(&format!("<label for=\"{id}\"")));
            let wrapped = html[..start]
                .rfind("<label")
                .is_some_and(|open| !html[open..start].contains("</label>"));
            assert!(
                labelled_for || element.contains("aria-label=") || wrapped,
                "a field without a label: {element}"
            );
        }
    }
    assert!(fields >= 12, "only {fields} fields found");
}
