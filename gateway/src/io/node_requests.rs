//! Requests to nodes over their links, for the rest of the daemon: one cloneable
//! [`NodeRequests`] handle, `request(uid, NodeRequest)`, whichever port the node is on.
//!
//! ```text
//! caller ─NodeRequests::request─► (ports[i]) ─► io::serial::run (port i)
//!                                                 PortSession: COMMAND out, RESPONSE matched
//!        ◄──────────── oneshot: Result<NodeAnswer, NodeRequestError> ─┘
//! ```
//!
//! Which port a node is on comes from the [`NodeDirectory`] the serial tasks keep: a port says
//! so when the store accepts a node on it, and forgets its node when the port closes. The
//! protocol (ids, timeouts, matching, errors) is `outpost_core::link::PortSession`'s; this
//! module only carries requests and answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outpost_core::node_request::{NodeAnswer, NodeRequest, NodeRequestError};
use outpost_proto::diag::LogEntry;
use tokio::sync::{mpsc, oneshot};

pub use outpost_core::node_request::DEFAULT_TIMEOUT;

/// Requests queued for one port's task before callers wait.
const PORT_QUEUE: usize = 16;
/// Most LOG_READ pages [`NodeRequests::read_log`] asks for: the node's ring holds 32 entries,
/// seven a page; the bound only stops a node that keeps logging faster than it is read.
const MAX_LOG_PAGES: usize = 16;

/// A request on its way to a port's task.
#[derive(Debug)]
pub struct PortRequest {
    pub uid: [u8; 8],
    pub request: NodeRequest,
    pub timeout: Duration,
    pub reply: oneshot::Sender<Result<NodeAnswer, NodeRequestError>>,
}

/// Which port each linked node is on, as the serial tasks see it.
#[derive(Debug, Clone, Default)]
pub struct NodeDirectory {
    ports: Arc<Mutex<HashMap<[u8; 8], usize>>>,
}

impl NodeDirectory {
    /// The store accepted `uid` on port `index`: it is the port's node now.
    pub fn attached(&self, index: usize, uid: [u8; 8]) {
        let mut ports = self.lock();
        ports.retain(|_, port| *port != index);
        ports.insert(uid, index);
    }

    /// Port `index` closed: no node is on it.
    pub fn port_closed(&self, index: usize) {
        self.lock().retain(|_, port| *port != index);
    }

    /// The port `uid` is on.
    #[must_use]
    pub fn port_of(&self, uid: &[u8; 8]) -> Option<usize> {
        self.lock().get(uid).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], usize>> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one port's task takes: its requests and the directory it keeps.
#[derive(Debug)]
pub struct PortRequests {
    pub requests: mpsc::Receiver<PortRequest>,
    pub directory: NodeDirectory,
}

/// Asks nodes things over their links (docs/node-link.md §2, COMMAND). Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeRequests {
    ports: Arc<Vec<mpsc::Sender<PortRequest>>>,
    directory: NodeDirectory,
}

/// The handle, and one [`PortRequests`] per serial port (in config order) for the port tasks.
#[must_use]
pub fn channels(ports: usize) -> (NodeRequests, Vec<PortRequests>) {
    let directory = NodeDirectory::default();
    let (senders, ends) = (0..ports)
        .map(|_| {
            let (tx, rx) = mpsc::channel(PORT_QUEUE);
            (
                tx,
                PortRequests {
                    requests: rx,
                    directory: directory.clone(),
                },
            )
        })
        .unzip();
    (
        NodeRequests {
            ports: Arc::new(senders),
            directory,
        },
        ends,
    )
}

impl NodeRequests {
    /// Asks node `uid` for `request` and waits for its answer, at most [`DEFAULT_TIMEOUT`] once
    /// the request is on its port. `NotLinked` at once when no port has the node.
    pub async fn request(
        &self,
        uid: [u8; 8],
        request: NodeRequest,
    ) -> Result<NodeAnswer, NodeRequestError> {
        self.request_within(uid, request, DEFAULT_TIMEOUT).await
    }

    /// [`NodeRequests::request`] with its own timeout.
    pub async fn request_within(
        &self,
        uid: [u8; 8],
        request: NodeRequest,
        timeout: Duration,
    ) -> Result<NodeAnswer, NodeRequestError> {
        let port = self
            .directory
            .port_of(&uid)
            .and_then(|i| self.ports.get(i))
            .ok_or(NodeRequestError::NotLinked)?;
        let (reply, answer) = oneshot::channel();
        port.send(PortRequest {
            uid,
            request,
            timeout,
            reply,
        })
        .await
        .map_err(|_| NodeRequestError::Stopped)?;
        // The port task answers every request it takes; a dropped reply means it stopped.
        answer.await.unwrap_or(Err(NodeRequestError::Stopped))
    }

    /// The node's whole log ring, oldest first, read page by page, and how many entries the
    /// ring had overwritten before the first one returned (numbered from 0 at the node's boot).
    pub async fn read_log(&self, uid: [u8; 8]) -> Result<(Vec<LogEntry>, u32), NodeRequestError> {
        let mut entries = Vec::new();
        let mut from = 0;
        let mut overwritten = None;
        for _ in 0..MAX_LOG_PAGES {
            let page = match self.request(uid, NodeRequest::LogRead { from }).await? {
                NodeAnswer::LogPage(page) => page,
                _ => {
                    return Err(NodeRequestError::BadAnswer(
                        outpost_proto::DecodeError::BadValue,
                    ));
                }
            };
            overwritten.get_or_insert(page.first);
            entries.extend_from_slice(&page.entries);
            if !page.more() || page.entries.is_empty() {
                break;
            }
            from = page
                .first
                .wrapping_add(u32::try_from(page.entries.len()).unwrap_or(u32::MAX));
        }
        Ok((entries, overwritten.unwrap_or(0)))
    }

    /// Whether a port has a session with `uid` now.
    #[must_use]
    pub fn is_linked(&self, uid: &[u8; 8]) -> bool {
        self.directory.port_of(uid).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_goes_to_the_port_the_node_is_on_and_nowhere_when_it_is_on_none() {
        let (handle, mut ends) = channels(2);
        let uid = [7; 8];
        assert_eq!(
            handle.request(uid, NodeRequest::HealthNow).await,
            Err(NodeRequestError::NotLinked)
        );
        ends[1].directory.attached(1, uid);
        let mut port1 = ends.remove(1);
        let answering = tokio::spawn(async move {
            let request = port1.requests.recv().await.expect("a request on port 1");
            assert_eq!(request.uid, [7; 8]);
            let _ = request.reply.send(Ok(NodeAnswer::HealthSent));
            port1
        });
        assert_eq!(
            handle.request(uid, NodeRequest::HealthNow).await,
            Ok(NodeAnswer::HealthSent)
        );
        let port1 = answering.await.unwrap();
        port1.directory.port_closed(1);
        assert!(!handle.is_linked(&uid));
        // A port task that stopped drops its end: callers learn it, they do not hang.
        port1.directory.attached(1, uid);
        drop(port1);
        assert_eq!(
            handle.request(uid, NodeRequest::HealthNow).await,
            Err(NodeRequestError::Stopped)
        );
    }
}
