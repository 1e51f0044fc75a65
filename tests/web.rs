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
    let since = std::time::Instant::now();
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
    let took = since.elapsed();
    // Its timeout (4 s), the store's commit and one refresh (2 s), with room for a loaded machine.
    assert!(took < Duration::from_secs(15), "offline after {took:?}");
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
