//! End-to-end: the local API's uploads and token scopes against a running gateway.
//!
//! An update upload is refused before its body is read (wrong token, bad name, no or too large a
//! `Content-Length`, too many at once), is streamed to a hidden file in the spool and leaves
//! nothing when cut off; each token opens only its own endpoints; guessing tokens is throttled
//! per peer address while the right token from another address still works.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outpost_e2e::{Proc, Site, bin, http, wait_for};

const PULL: &str = "e2e-pull-token-0123456789";
const UPLOAD: &str = "e2e-upload-token-0123456789";
const TECHNICIAN: &str = "e2e-technician-token-0123456789";
const MIB: u64 = 1024 * 1024;
/// `MAX_ARTIFACT_BYTES`: 64 MiB.
const MAX_ARTIFACT: u64 = 64 * MIB;

/// A gateway (no nodes) with `api` keys in a drop-in (`outpost.d/`, as a site provisions its
/// tokens) and `extra` appended to its config, started; ready once its API answers (the read
/// endpoints may need a token, so any answer will do).
fn start(api: &str, extra: &str) -> Site {
    let mut site = Site::with_config(Vec::new(), extra).unwrap();
    let dropins = site.dir.path().join("outpost.d");
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(dropins.join("50-api.toml"), format!("[api]\n{api}")).unwrap();
    spawn_gateway(&mut site);
    site
}

/// Starts (or restarts) the site's gateway and waits for its API.
fn spawn_gateway(site: &mut Site) {
    let mut cmd = Command::new(bin("outpost"));
    cmd.arg("run").arg("--config").arg(site.config_path());
    site.gateway = Some(Proc::spawn("gateway", &mut cmd).unwrap());
    let api = site.api;
    wait_for(Duration::from_secs(20), "the gateway's API", || {
        http(api, "GET", "/api/v1/status", None, None).ok()
    })
    .unwrap();
}

/// A gateway that takes uploads (and pull, with another token).
fn start_uploads() -> Site {
    start(
        &format!("upload_token = \"{UPLOAD}\"\n"),
        &format!("[uplink.pull]\ntoken = \"{PULL}\"\n"),
    )
}

/// The daemon's peak resident memory (VmHWM), in bytes.
fn peak_rss(site: &Site) -> u64 {
    let pid = site.gateway.as_ref().unwrap().pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn spool(site: &Site) -> PathBuf {
    site.dir.path().join("data/updates/incoming")
}

/// Every name in the spool, hidden ones too.
fn spool_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A connection to the API from `from` (a loopback address) or the default.
fn connect(api: SocketAddr, from: Option<Ipv4Addr>) -> TcpStream {
    let stream = match from {
        None => TcpStream::connect_timeout(&api, Duration::from_secs(2)).unwrap(),
        Some(ip) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            let stream = rt.block_on(async {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
                socket.connect(api).await.unwrap()
            });
            let stream = stream.into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends a request head (HTTP/1.1, `Connection: close`), no body.
fn send_head(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_length: Option<u64>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(token) = token {
        head += &format!("Authorization: Bearer {token}\r\n");
    }
    if let Some(n) = content_length {
        head += &format!("Content-Length: {n}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).unwrap();
}

/// An answer: status, head (lower-cased), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads an answer until the server closes; `None` on a time-out or a reset before any byte.
fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after the answer arrived (the server did not read the body we sent).
            Err(_) if !bytes.is_empty() => break,
            Err(_) => return None,
        }
    }
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&bytes[end + 4..]).into_owned(),
    })
}

fn request(api: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Answer {
    request_from(api, None, method, path, token)
}

fn request_from(
    api: SocketAddr,
    from: Option<Ipv4Addr>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let mut stream = connect(api, from);
    send_head(&mut stream, method, path, token, None);
    read_answer(&mut stream).expect("an answer")
}

/// A whole upload of `body`.
fn upload(api: SocketAddr, name: &str, token: Option<&str>, body: &[u8]) -> Answer {
    let mut stream = connect(api, None);
    send_head(
        &mut stream,
        "PUT",
        &format!("/api/v1/updates/{name}"),
        token,
        Some(body.len() as u64),
    );
    let _ = stream.write_all(body);
    read_answer(&mut stream).expect("an answer")
}

/// Streams `length` zero bytes in 1 MiB writes from one buffer (the client never holds the whole
/// body), reading the answer on another thread; stops writing when the server stops reading.
/// Returns the answer (`None`: reset before any) and the bytes written.
fn stream_upload(
    api: SocketAddr,
    name: &str,
    token: Option<&str>,
    length: u64,
) -> (Option<Answer>, u64) {
    let mut stream = connect(api, None);
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    send_head(
        &mut stream,
        "PUT",
        &format!("/api/v1/updates/{name}"),
        token,
        Some(length),
    );
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || read_answer(&mut reader));
    let chunk = vec![0u8; MIB as usize];
    let mut written = 0u64;
    while written < length {
        let n = chunk.len().min(usize::try_from(length - written).unwrap());
        if stream.write_all(&chunk[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
    (answer.join().unwrap(), written)
}

#[test]
fn an_unauthenticated_upload_is_answered_before_its_body_is_read_and_costs_no_memory() {
    let site = start_uploads();
    let before = peak_rss(&site);

    // The head alone gets the answer: the server does not wait for 63 MiB it would refuse.
    let mut stream = connect(site.api, None);
    send_head(
        &mut stream,
        "PUT",
        "/api/v1/updates/outpost_9.9.9_amd64.deb",
        None,
        Some(63 * MIB),
    );
    let answer = read_answer(&mut stream).expect("answered without the body");
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer.head.contains("www-authenticate: bearer"),
        "{answer:?}"
    );

    // Six at once, each streaming 63 MiB.
    let api = site.api;
    let clients: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                stream_upload(api, &format!("outpost_9.9.{i}_amd64.deb"), None, 63 * MIB)
            })
        })
        .collect();
    for client in clients {
        let (answer, written) = client.join().unwrap();
        if let Some(answer) = answer {
            assert_eq!(answer.status, 401, "{answer:?}");
        }
        assert!(written < 63 * MIB, "the server read the whole refused body");
    }
    let peak = peak_rss(&site);
    println!(
        "daemon VmHWM: {:.1} MiB at start, {:.1} MiB after 6 parallel unauthenticated 63 MiB uploads",
        before as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    assert!(peak < 64 * MIB, "VmHWM {peak} bytes");
    assert!(spool_names(&spool(&site)).is_empty());
}

#[test]
fn parallel_authenticated_uploads_stream_to_disk_within_bounded_memory() {
    let site = start_uploads();
    let api = site.api;
    let clients: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                stream_upload(
                    api,
                    &format!("outpost_9.9.{i}_amd64.deb"),
                    Some(UPLOAD),
                    63 * MIB,
                )
            })
        })
        .collect();
    for client in clients {
        let (answer, written) = client.join().unwrap();
        let answer = answer.expect("an answer");
        assert_eq!(answer.status, 201, "{answer:?}");
        assert_eq!(written, 63 * MIB);
    }
    let peak = peak_rss(&site);
    println!(
        "daemon VmHWM: {:.1} MiB after 2 parallel authenticated 63 MiB uploads",
        peak as f64 / MIB as f64
    );
    assert!(peak < 64 * MIB, "VmHWM {peak} bytes");
    let dir = spool(&site);
    assert_eq!(
        spool_names(&dir),
        ["outpost_9.9.0_amd64.deb", "outpost_9.9.1_amd64.deb"]
    );
    for name in spool_names(&dir) {
        assert_eq!(std::fs::metadata(dir.join(name)).unwrap().len(), 63 * MIB);
    }
}

#[test]
fn uploads_without_or_beyond_their_announced_size_are_refused_at_once() {
    let site = start_uploads();
    let path = "/api/v1/updates/outpost_9.9.9_amd64.deb";

    let mut stream = connect(site.api, None);
    send_head(
        &mut stream,
        "PUT",
        path,
        Some(UPLOAD),
        Some(MAX_ARTIFACT + 1),
    );
    let answer = read_answer(&mut stream).expect("answered without the body");
    assert_eq!(answer.status, 413, "{answer:?}");

    // No Content-Length (a chunked body): 411, nothing read.
    let mut stream = connect(site.api, None);
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {UPLOAD}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let answer = read_answer(&mut stream).expect("answered without the body");
    assert_eq!(answer.status, 411, "{answer:?}");

    // Bad names, as before: refused before the body.
    assert_eq!(
        upload(site.api, "..%2Fevil.deb", Some(UPLOAD), b"x").status,
        400
    );
    assert_eq!(upload(site.api, "run.sh", Some(UPLOAD), b"x").status, 400);
    assert!(spool_names(&spool(&site)).is_empty());
}

#[test]
fn a_third_upload_at_once_is_told_to_come_back_later() {
    let site = start_uploads();
    let path = |i| format!("/api/v1/updates/outpost_9.9.{i}_amd64.deb");
    // Two uploads in progress, each 1 MiB into 8.
    let mut busy: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut stream = connect(site.api, None);
            send_head(&mut stream, "PUT", &path(i), Some(UPLOAD), Some(8 * MIB));
            stream.write_all(&vec![0u8; MIB as usize]).unwrap();
            stream
        })
        .collect();
    let dir = spool(&site);
    wait_for(Duration::from_secs(10), "two uploads in progress", || {
        (spool_names(&dir).len() == 2).then_some(())
    })
    .unwrap();

    let mut third = connect(site.api, None);
    send_head(&mut third, "PUT", &path(2), Some(UPLOAD), Some(8 * MIB));
    let answer = read_answer(&mut third).expect("answered without the body");
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.head.contains("retry-after: "), "{answer:?}");

    // The first finishes; a slot is free again.
    let mut first = busy.remove(0);
    first.write_all(&vec![0u8; 7 * MIB as usize]).unwrap();
    assert_eq!(read_answer(&mut first).unwrap().status, 201);
    assert_eq!(
        upload(
            site.api,
            "outpost_9.9.3_amd64.deb",
            Some(UPLOAD),
            b"package"
        )
        .status,
        201
    );
}

#[test]
fn an_upload_is_streamed_to_a_hidden_file_and_a_cut_off_one_leaves_nothing() {
    let site = start_uploads();
    let dir = spool(&site);
    let mut stream = connect(site.api, None);
    send_head(
        &mut stream,
        "PUT",
        "/api/v1/updates/outpost_9.9.9_amd64.deb",
        Some(UPLOAD),
        Some(32 * MIB),
    );
    stream.write_all(&vec![7u8; 4 * MIB as usize]).unwrap();
    let partial = wait_for(
        Duration::from_secs(10),
        "the body on disk as it comes",
        || {
            let names = spool_names(&dir);
            let name = names.iter().find(|n| n.starts_with('.'))?;
            let len = std::fs::metadata(dir.join(name)).ok()?.len();
            (len >= MIB).then(|| name.clone())
        },
    )
    .unwrap();
    assert!(partial.ends_with(".partial"), "{partial}");

    // The client goes away mid-body.
    drop(stream);
    wait_for(
        Duration::from_secs(10),
        "the cut-off upload removed",
        || spool_names(&dir).is_empty().then_some(()),
    )
    .unwrap();

    // The .deb then its .sig, as the root agent expects them.
    assert_eq!(
        upload(
            site.api,
            "outpost_9.9.9_amd64.deb",
            Some(UPLOAD),
            b"package"
        )
        .status,
        201
    );
    let answer = upload(
        site.api,
        "outpost_9.9.9_amd64.deb.sig",
        Some(UPLOAD),
        b"manifest",
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["bytes"], 8, "{json}");
    assert_eq!(
        spool_names(&dir),
        ["outpost_9.9.9_amd64.deb", "outpost_9.9.9_amd64.deb.sig"]
    );
    assert_eq!(
        std::fs::read(dir.join("outpost_9.9.9_amd64.deb")).unwrap(),
        b"package"
    );
}

#[test]
fn an_upload_cut_off_by_a_crash_leaves_nothing_after_the_restart() {
    let mut site = start_uploads();
    let dir = spool(&site);
    let mut stream = connect(site.api, None);
    send_head(
        &mut stream,
        "PUT",
        "/api/v1/updates/outpost_9.9.9_amd64.deb",
        Some(UPLOAD),
        Some(8 * MIB),
    );
    stream.write_all(&vec![7u8; MIB as usize]).unwrap();
    wait_for(Duration::from_secs(10), "the upload in progress", || {
        (!spool_names(&dir).is_empty()).then_some(())
    })
    .unwrap();
    site.gateway.as_mut().unwrap().kill_hard();
    drop(stream);
    assert_eq!(
        spool_names(&dir).len(),
        1,
        "the crash left the partial file"
    );

    spawn_gateway(&mut site);
    assert!(spool_names(&dir).is_empty(), "{:?}", spool_names(&dir));
}

#[test]
fn each_token_opens_only_its_own_endpoints() {
    let site = start(
        &format!("upload_token = \"{UPLOAD}\"\ntechnician_token = \"{TECHNICIAN}\"\n"),
        &format!("[uplink.pull]\ntoken = \"{PULL}\"\n"),
    );
    let api = site.api;
    let status = |path: &str, token| request(api, "GET", path, token).status;
    for read in ["/api/v1/status", "/api/v1/nodes", "/api/v1/modbus"] {
        assert_eq!(status(read, Some(TECHNICIAN)), 200, "{read}");
    }
    assert_eq!(status("/api/v1/status", None), 401);
    assert_eq!(status("/api/v1/status", Some(PULL)), 401);
    assert_eq!(status("/api/v1/nodes", Some(UPLOAD)), 401);

    assert_eq!(status("/api/v1/batches", Some(PULL)), 200);
    assert_eq!(status("/api/v1/batches", Some(UPLOAD)), 401);
    assert_eq!(status("/api/v1/batches", Some(TECHNICIAN)), 401);

    let name = "outpost_9.9.9_amd64.deb";
    assert_eq!(upload(api, name, Some(PULL), b"package").status, 401);
    assert_eq!(upload(api, name, Some(TECHNICIAN), b"package").status, 401);
    assert_eq!(upload(api, name, Some(UPLOAD), b"package").status, 201);
}

#[test]
fn without_an_upload_token_uploads_are_off_and_without_a_technician_token_reads_are_open() {
    let site = start("", &format!("[uplink.pull]\ntoken = \"{PULL}\"\n"));
    let answer = upload(site.api, "outpost_9.9.9_amd64.deb", Some(PULL), b"package");
    assert_eq!(answer.status, 404, "{answer:?}");
    assert!(answer.body.contains("api.upload_token"), "{answer:?}");
    assert_eq!(request(site.api, "GET", "/api/v1/status", None).status, 200);
    assert!(spool_names(&spool(&site)).is_empty());
}

#[test]
fn guessing_tokens_is_throttled_per_address_and_raises_an_alert() {
    let site = start_uploads();
    let attacker = Some(Ipv4Addr::new(127, 0, 0, 1));
    let mut answers = Vec::new();
    for i in 0..200 {
        let guess = format!("guess-{i:020}");
        answers.push(request_from(
            site.api,
            attacker,
            "GET",
            "/api/v1/batches",
            Some(&guess),
        ));
    }
    let count = |code| answers.iter().filter(|a| a.status == code).count();
    println!(
        "200 wrong tokens: {} answered 401, {} answered 429",
        count(401),
        count(429)
    );
    assert!(count(429) >= 150, "{} of 200 throttled", count(429));
    assert_eq!(count(401) + count(429), 200);
    let throttled = answers.iter().find(|a| a.status == 429).unwrap();
    assert!(throttled.head.contains("retry-after: "), "{throttled:?}");
    // Even the right token waits at the throttled address...
    assert_eq!(
        request_from(site.api, attacker, "GET", "/api/v1/batches", Some(PULL)).status,
        429
    );
    // ...but another address gets in.
    let elsewhere = Some(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(
        request_from(site.api, elsewhere, "GET", "/api/v1/batches", Some(PULL)).status,
        200
    );

    let status: serde_json::Value = serde_json::from_str(
        &request_from(site.api, elsewhere, "GET", "/api/v1/status", None).body,
    )
    .unwrap();
    let alerts = status["store"]["alerts"].as_array().unwrap();
    assert!(
        alerts.iter().any(|a| a["kind"] == "auth_failures"),
        "{alerts:?}"
    );
    assert!(
        status["auth"]["throttled"].as_u64().unwrap() >= 150,
        "{}",
        status["auth"]
    );
    assert!(
        status["auth"]["failures"].as_u64().unwrap() <= 20,
        "{}",
        status["auth"]
    );

    // The allowance comes back (one guess per 6 s): the alert resolves with no request needed.
    wait_for(
        Duration::from_secs(30),
        "the auth_failures alert resolved",
        || {
            let answer = request_from(site.api, elsewhere, "GET", "/api/v1/status", None);
            let status: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
            let alerts = status["store"]["alerts"].as_array()?;
            (!alerts.iter().any(|a| a["kind"] == "auth_failures")).then_some(())
        },
    )
    .unwrap();
}
