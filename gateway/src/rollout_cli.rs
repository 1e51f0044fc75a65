//! `outpost rollout start|status|halt`: node firmware rollouts on the running gateway, through
//! its local API with the technician token (`[api] technician_token_file`), with a live progress
//! bar per node.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// How often the live view asks for the rollout's status.
const POLL: Duration = Duration::from_millis(500);

/// The running gateway's local API, as the configuration names it.
pub(crate) struct Api {
    addr: SocketAddr,
    token: String,
}

impl Api {
    pub(crate) fn from_config(config: &outpost_core::config::Config) -> anyhow::Result<Api> {
        let Some(token) = config.technician_token.clone() else {
            bail!(
                "the rollout commands talk to the running gateway through its local API with the \
                 technician token: set [api] technician_token_file"
            );
        };
        let mut addr = config.api_listen;
        // Listening on every address: talk to it on loopback.
        if addr.ip() == Ipv4Addr::UNSPECIFIED {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        } else if addr.ip() == Ipv6Addr::UNSPECIFIED {
            addr.set_ip(Ipv6Addr::LOCALHOST.into());
        }
        Ok(Api { addr, token })
    }

    /// One request; the status and the body as JSON (`null` when it is not JSON).
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        // The commands run inside main's runtime, one request at a time.
        let runtime = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            runtime.block_on(async {
                let stream = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot reach the gateway's API at {} (is outpost running?)",
                            self.addr
                        )
                    })?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                let (bytes, content_type) = body.unwrap_or((Vec::new(), "application/json"));
                let request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::HOST, self.addr.to_string())
                    .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(bytes)))?;
                let response =
                    tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
                        .await
                        .context("the gateway's API did not answer in time")??;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
            })
        })
    }
}

/// What `outpost rollout start` was given.
pub(crate) struct StartArgs {
    pub(crate) artifact: String,
    pub(crate) canary: Option<usize>,
    pub(crate) waves: Option<String>,
    pub(crate) soak: Option<String>,
    pub(crate) confirm_within: Option<String>,
    pub(crate) node: Option<String>,
    pub(crate) wait: bool,
}

/// Starts a rollout; with `wait`, follows it to its end. An artifact that is a file on disk
/// (with its `.sig` beside it) is added to the gateway's library first.
pub(crate) fn start(api: &Api, args: StartArgs) -> anyhow::Result<bool> {
    let path = Path::new(&args.artifact);
    let artifact = if path.is_file() {
        upload(api, path)?
    } else {
        args.artifact.clone()
    };
    let mut spec = serde_json::json!({ "artifact": artifact });
    for (key, value) in [
        ("waves", &args.waves),
        ("soak", &args.soak),
        ("confirm_within", &args.confirm_within),
        ("node", &args.node),
    ] {
        if let Some(v) = value {
            spec[key] = Value::String(v.clone());
        }
    }
    if let Some(c) = args.canary {
        spec["canary"] = c.into();
    }
    let (status, body) = api.call(
        Method::POST,
        "/api/v1/rollout",
        Some((spec.to_string().into_bytes(), "application/json")),
    )?;
    if status != StatusCode::CREATED {
        bail!("{}", refusal(&body, status));
    }
    println!(
        "rollout {} started: firmware {} to {} node(s)",
        body["id"],
        body["version"].as_str().unwrap_or("?"),
        body["total"]
    );
    if !args.wait {
        return Ok(true);
    }
    follow(api)
}

/// Adds `image` (and `image.sig`) to the gateway's library; its file name there.
fn upload(api: &Api, image: &Path) -> anyhow::Result<String> {
    let sig = outpost::io::signing_files::sig_path(image);
    let mut bundle =
        std::fs::read(&sig).with_context(|| format!("cannot read {}", sig.display()))?;
    bundle
        .extend(std::fs::read(image).with_context(|| format!("cannot read {}", image.display()))?);
    let (status, body) = api.call(
        Method::POST,
        "/api/v1/firmware",
        Some((bundle, "application/octet-stream")),
    )?;
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match status {
        StatusCode::CREATED => {
            println!(
                "added {} to the gateway's library: firmware {} for hardware revision {}",
                name,
                body["version"].as_str().unwrap_or("?"),
                body["hw_rev"]
            );
            Ok(body["file"].as_str().unwrap_or(&name).to_owned())
        }
        StatusCode::CONFLICT => Ok(name), // already there
        _ => bail!("{} not added: {}", image.display(), refusal(&body, status)),
    }
}

fn refusal(body: &Value, status: StatusCode) -> String {
    match (body["kind"].as_str(), body["error"].as_str()) {
        (Some(kind), Some(error)) => format!("refused ({kind}): {error}"),
        _ => format!("the gateway answered {status}"),
    }
}

/// Shows the rollout's progress live until it ends: whether it ended done.
pub(crate) fn follow(api: &Api) -> anyhow::Result<bool> {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:30}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let header = multi.add(ProgressBar::new_spinner());
    let mut bars: Vec<(String, ProgressBar)> = Vec::new();
    loop {
        let (status, view) = api.call(Method::GET, "/api/v1/rollout", None)?;
        if status != StatusCode::OK {
            bail!("{}", refusal(&view, status));
        }
        let rollout = &view["rollout"];
        if rollout.is_null() {
            bail!("no rollout on this gateway");
        }
        header.set_message(summary(rollout));
        header.tick();
        for node in rollout["nodes"].as_array().into_iter().flatten() {
            let uid = node["uid"].as_str().unwrap_or("?").to_owned();
            let bar = match bars.iter().find(|(u, _)| *u == uid) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = multi.add(ProgressBar::new(1000).with_style(style.clone()));
                    bar.set_prefix(uid.clone());
                    bars.push((uid, bar.clone()));
                    bar
                }
            };
            let phase = node["phase"].as_str().unwrap_or("?");
            let fraction = match phase {
                "confirmed" | "finalized" | "rolled_back" => 1.0,
                _ => node["progress"].as_f64().unwrap_or(0.0),
            };
            bar.set_position((fraction * 1000.0) as u64);
            let detail = node["detail"]
                .as_str()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            bar.set_message(format!("{phase}{detail}"));
        }
        match rollout["state"].as_str() {
            Some("done") => {
                header.finish_with_message(summary(rollout));
                bars.iter().for_each(|(_, b)| b.finish());
                return Ok(true);
            }
            Some("halted") => {
                header.finish_with_message(summary(rollout));
                bars.iter().for_each(|(_, b)| b.abandon());
                return Ok(false);
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

fn summary(rollout: &Value) -> String {
    let halt = rollout["halt_reason"]
        .as_str()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    format!(
        "rollout {} of firmware {}: {} in {}, {}/{} updated{halt}",
        rollout["id"],
        rollout["version"].as_str().unwrap_or("?"),
        rollout["state"].as_str().unwrap_or("?"),
        rollout["stage"].as_str().unwrap_or("-"),
        rollout["updated"],
        rollout["total"],
    )
}

/// `outpost rollout status`: the rollout's state, once (or as JSON).
pub(crate) fn status(api: &Api, json: bool) -> anyhow::Result<()> {
    let (status, view) = api.call(Method::GET, "/api/v1/rollout", None)?;
    if status != StatusCode::OK {
        bail!("{}", refusal(&view, status));
    }
    if json {
        println!("{view}");
        return Ok(());
    }
    let rollout = &view["rollout"];
    if rollout.is_null() {
        println!("no rollout since the gateway started");
    } else {
        println!("{}", summary(rollout));
        for node in rollout["nodes"].as_array().into_iter().flatten() {
            let progress = node["progress"]
                .as_f64()
                .map(|p| format!(" {:.0}%", p * 100.0))
                .unwrap_or_default();
            println!(
                "  {} {:<8} {} → {}  {}{progress}{}",
                node["uid"].as_str().unwrap_or("?"),
                node["stage"].as_str().unwrap_or("-"),
                node["from_version"].as_str().unwrap_or("?"),
                node["to_version"].as_str().unwrap_or("?"),
                node["phase"].as_str().unwrap_or("?"),
                node["detail"]
                    .as_str()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
            );
        }
    }
    Ok(())
}

/// `outpost rollout halt [--rollback]`.
pub(crate) fn halt(api: &Api, rollback: bool) -> anyhow::Result<()> {
    let body = serde_json::json!({ "rollback": rollback }).to_string();
    let (status, view) = api.call(
        Method::POST,
        "/api/v1/rollout/halt",
        Some((body.into_bytes(), "application/json")),
    )?;
    if status != StatusCode::OK {
        bail!("{}", refusal(&view, status));
    }
    println!("{}", summary(&view));
    Ok(())
}
