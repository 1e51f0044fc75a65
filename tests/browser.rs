//! A real headless Chromium driven over WebDriver: Debian's `chromium` and `chromium-driver`
//! (installed by scripts/test.sh), chromedriver on a free loopback port, fantoccini as the
//! client. Each [`Browser`] is its own chromedriver process and Chromium profile, stopped by PID
//! when dropped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use crate::{Proc, free_port, wait_for};

/// Where Debian puts them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    // Dropped in this order: the session, then chromedriver, then the profile.
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").finish_non_exhaustive()
    }
}

impl Browser {
    /// A headless Chromium whose window is `width` × `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        for path in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(path).exists() {
                bail!(
                    "{path} is missing: run scripts/test.sh, which installs chromium and chromium-driver"
                );
            }
        }
        let port = free_port();
        let driver = Proc::spawn(
            "chromedriver",
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .arg("--log-level=WARNING"),
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let profile = tempfile::Builder::new()
            .prefix("outpost-chromium-")
            .tempdir()?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // Root in a container: Chromium's sandbox needs user namespaces it may not get.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    // Under load Chromium may treat a headless window as occluded or in the
                    // background and then throttle its timers and hide the page, which stretches
                    // the page's 2 s refresh to its 30 s hidden one (Puppeteer's defaults too).
                    "--disable-background-timer-throttling",
                    "--disable-backgrounding-occluded-windows",
                    "--disable-renderer-backgrounding",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_for(Duration::from_secs(30), "chromedriver", || {
            runtime
                .block_on(
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(capabilities.clone())
                        .connect(&url),
                )
                .ok()
        })?;
        let browser = Browser {
            client: Some(client),
            runtime,
            _driver: driver,
            _profile: profile,
        };
        browser.set_viewport(width, height)?;
        Ok(browser)
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }

    /// Makes the page's viewport (not the window) `width` × `height` CSS pixels, as a phone's.
    pub fn set_viewport(&self, width: u32, height: u32) -> Result<()> {
        self.runtime.block_on(async {
            self.client()
                .issue_cmd(ExecuteCdp::new(
                    "Emulation.setDeviceMetricsOverride",
                    json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
                ))
                .await
                .context("setting the viewport")
        })?;
        Ok(())
    }

    /// Makes the page see a device that asks for a dark colour scheme (`prefers-color-scheme`).
    pub fn prefer_dark(&self) -> Result<()> {
        self.runtime.block_on(async {
            self.client()
                .issue_cmd(ExecuteCdp::new(
                    "Emulation.setEmulatedMedia",
                    json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
                ))
                .await
                .context("emulating a dark colour scheme")
        })?;
        Ok(())
    }

    /// Empties the browser's HTTP cache: the next load is a cold one.
    pub fn clear_cache(&self) -> Result<()> {
        self.runtime.block_on(async {
            self.client()
                .issue_cmd(ExecuteCdp::new("Network.clearBrowserCache", json!({})))
                .await
                .context("clearing the cache")
        })?;
        Ok(())
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.runtime
            .block_on(self.client().goto(url))
            .with_context(|| format!("opening {url}"))
    }

    /// Runs `script` (a function body: `return …`) in the page and returns its value.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .with_context(|| format!("running {script}"))
    }

    /// Runs `script` with a callback as its last argument (`arguments[arguments.length - 1]`)
    /// and returns what it passes to the callback: for `fetch` and other promises.
    pub fn eval_async(&self, script: &str) -> Result<Value> {
        self.runtime
            .block_on(self.client().execute_async(script, Vec::new()))
            .with_context(|| format!("running {script}"))
    }

    /// Runs `script` until it returns something other than `null` or `false`.
    pub fn wait_eval(&self, timeout: Duration, what: &str, script: &str) -> Result<Value> {
        let mut last = Value::Null;
        let outcome = wait_for(timeout, what, || match self.eval(script) {
            Ok(Value::Null | Value::Bool(false)) => None,
            Ok(v) => Some(v),
            Err(e) => {
                last = Value::String(format!("{e:#}"));
                None
            }
        });
        outcome.with_context(|| format!("last error: {last}"))
    }

    /// Chooses `file` in the page's `<input type=file>` found by CSS `selector`, as a person
    /// picking it in the file dialog would (WebDriver's send-keys of the path; the page then
    /// reads the file from disk through the browser).
    pub fn choose_file(&self, selector: &str, file: &Path) -> Result<()> {
        let path = file
            .canonicalize()
            .with_context(|| format!("{}", file.display()))?;
        self.runtime.block_on(async {
            let input = self
                .client()
                .find(fantoccini::Locator::Css(selector))
                .await
                .with_context(|| format!("finding {selector}"))?;
            input
                .send_keys(&path.display().to_string())
                .await
                .with_context(|| format!("choosing {} in {selector}", path.display()))
        })
    }

    /// The page as a PNG.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        Ok(self.runtime.block_on(self.client().screenshot())?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
        }
    }
}

/// Chromium's DevTools command passthrough (`goog/cdp/execute`), for what WebDriver has no
/// command for: the device metrics of a phone.
#[derive(Debug)]
struct ExecuteCdp {
    body: Value,
}

impl ExecuteCdp {
    fn new(cmd: &str, params: Value) -> ExecuteCdp {
        ExecuteCdp {
            body: json!({"cmd": cmd, "params": params}),
        }
    }
}

impl fantoccini::wd::WebDriverCompatibleCommand for ExecuteCdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> std::result::Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}
