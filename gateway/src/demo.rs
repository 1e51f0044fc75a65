//! `outpost demo`: a simulated site on this machine.
#[derive(Debug)]
pub struct DemoOptions { pub nodes: usize, pub listen: std::net::SocketAddr, pub rate: f64 }
pub async fn run(_o: DemoOptions, _s: tokio_util::sync::CancellationToken) -> anyhow::Result<()> { anyhow::bail!("demo: in progress") }
