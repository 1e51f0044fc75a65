//! Requests the gateway makes of a node over its link, and their answers: reboot it, have it send
//! HEALTH now, pull its reset history and its log (`outpost_proto::diag`, docs/node-link.md §2).
//!
//! Design: these are values only. [`crate::link::PortSession`] turns a [`NodeRequest`] into a
//! sealed COMMAND, matches the RESPONSE by its id, and times the request out on the time it is
//! given; the serial adapter carries requests in and answers out
//! (`outpost::io::node_requests`). A node's refusal (it does not know the command, or refused
//! its arguments) is an answer from the node, kept apart from "the node could not be asked".

use std::time::Duration;

use outpost_proto::diag::{self, LogPage, LogRead, ResetHistory};
use outpost_proto::{DecodeError, Response};

/// How long a request waits for its RESPONSE when the caller gives no other time: a HEALTH
/// interval is 10 s, a RESPONSE normally takes a few frame times.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the gateway asks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRequest {
    /// Reset now (a soft reboot): the node answers, then resets; its next boot reports reason
    /// `software`.
    Reboot,
    /// Send a HEALTH at once; it goes to the store like any other.
    HealthNow,
    /// The node's last resets, newest first, from its flash.
    ResetHistory,
    /// Up to seven entries of the node's log ring from entry number `from`.
    LogRead { from: u32 },
}

impl NodeRequest {
    /// The COMMAND code and arguments.
    #[must_use]
    pub fn command(
        &self,
    ) -> (
        u8,
        heapless::Vec<u8, { outpost_proto::wire::MAX_COMMAND_BODY }>,
    ) {
        let mut args = heapless::Vec::new();
        let code = match self {
            NodeRequest::Reboot => diag::code::REBOOT,
            NodeRequest::HealthNow => diag::code::HEALTH_NOW,
            NodeRequest::ResetHistory => diag::code::RESET_HISTORY,
            NodeRequest::LogRead { from } => {
                // Cannot fail: 4 bytes into 64.
                let _ = args.extend_from_slice(&LogRead { from: *from }.to_bytes());
                diag::code::LOG_READ
            }
        };
        (code, args)
    }

    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRequest::Reboot => "reboot",
            NodeRequest::HealthNow => "health-now",
            NodeRequest::ResetHistory => "reset-history",
            NodeRequest::LogRead { .. } => "log-read",
        }
    }

    /// The node's RESPONSE to this request, read.
    pub fn answer(&self, response: &Response) -> Result<NodeAnswer, NodeRequestError> {
        match response.status {
            diag::status::OK => {}
            diag::status::UNSUPPORTED => return Err(NodeRequestError::Unsupported),
            status => return Err(NodeRequestError::Refused { status }),
        }
        let body = &response.body[..];
        let bad = |error| NodeRequestError::BadAnswer(error);
        match self {
            NodeRequest::Reboot if body.is_empty() => Ok(NodeAnswer::Rebooting),
            NodeRequest::HealthNow if body.is_empty() => Ok(NodeAnswer::HealthSent),
            NodeRequest::Reboot | NodeRequest::HealthNow => Err(bad(DecodeError::TrailingBytes)),
            NodeRequest::ResetHistory => ResetHistory::parse(body)
                .map(NodeAnswer::ResetHistory)
                .map_err(bad),
            NodeRequest::LogRead { .. } => {
                LogPage::parse(body).map(NodeAnswer::LogPage).map_err(bad)
            }
        }
    }
}

/// A node's answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAnswer {
    /// REBOOT taken: the node resets now.
    Rebooting,
    /// The HEALTH went out before this answer.
    HealthSent,
    ResetHistory(ResetHistory),
    LogPage(LogPage),
}

/// Why a [`NodeRequest`] got no answer, or a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NodeRequestError {
    /// No port has a session with the node now.
    #[error("the node is not linked to this gateway")]
    NotLinked,
    /// The request went out and no RESPONSE came in time.
    #[error("the node did not answer in time")]
    TimedOut,
    /// The node's session ended (it reset, the port closed) before it answered.
    #[error("the node's link was lost before it answered")]
    LinkLost,
    /// The node does not know the command (older firmware).
    #[error("the node's firmware does not support this request")]
    Unsupported,
    /// The node refused the request with this RESPONSE status.
    #[error("the node refused the request (status {status})")]
    Refused { status: u8 },
    /// The node answered with a body that is not what the request returns.
    #[error("the node's answer is malformed: {0}")]
    BadAnswer(DecodeError),
    /// The port has as many requests in flight as it takes.
    #[error("too many requests in flight on the node's port")]
    Busy,
    /// The gateway is stopping.
    #[error("the gateway is stopping")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u8, body: &[u8]) -> Response {
        Response {
            id: 1,
            status,
            body: heapless::Vec::from_slice(body).unwrap(),
        }
    }

    #[test]
    fn answers_are_read_by_what_was_asked() {
        assert_eq!(
            NodeRequest::Reboot.answer(&response(0, &[])),
            Ok(NodeAnswer::Rebooting)
        );
        assert_eq!(
            NodeRequest::ResetHistory.answer(&response(0, &[0])),
            Ok(NodeAnswer::ResetHistory(ResetHistory::default()))
        );
        assert_eq!(
            NodeRequest::ResetHistory.answer(&response(0, &[2, 1])),
            Err(NodeRequestError::BadAnswer(DecodeError::Truncated))
        );
        assert_eq!(
            NodeRequest::HealthNow.answer(&response(1, &[])),
            Err(NodeRequestError::Unsupported)
        );
        assert_eq!(
            NodeRequest::LogRead { from: 3 }.answer(&response(2, &[])),
            Err(NodeRequestError::Refused { status: 2 })
        );
        assert_eq!(
            NodeRequest::LogRead { from: 3 }.command().1.as_slice(),
            &[3, 0, 0, 0]
        );
    }
}
