//! Node firmware over the node link: the gateway's side of one node's transfer
//! (`docs/ota-design.md` §4 and §6.1), as an IO-free state machine.
//!
//! - [`Image`]: an admitted image and its signed manifest, held once (`Arc`) and shared by every
//!   port that sends it;
//! - [`Transfer`]: one per node being updated, owned by the port's session (`link::PortSession`),
//!   which seals what it asks for with the session's counter;
//! - [`Pacer`]: the token bucket that keeps chunks to `ota_share` of the line.
//!
//! # Driving a transfer (the adapter's side)
//!
//! Inputs, with the time: [`Transfer::start`], [`Transfer::handle_status`] (every OTA_STATUS the
//! session opens), [`Transfer::handle_timeout`], [`Transfer::handle_link_lost`] and
//! [`Transfer::handle_link_up`] (the node's session ended / a new one opened), and the rollout's
//! [`Transfer::install`], [`Transfer::abort`], [`Transfer::finalize`]. After each input, drain:
//!
//! 1. [`Transfer::poll_control`] until `None`: an OFFER (bulk, `Bulk::Offer(image.offer(chunk))`)
//!    or an OTA_CONTROL, sealed and put in the port's **small, priority queue** with ACKs and
//!    NACKs, ahead of any chunk;
//! 2. [`Transfer::poll_chunk`] when the port's transmit buffer is empty (the previous chunk is on
//!    the line): `Some` only when credit, holes and the pacer allow; seal
//!    `Bulk::Chunk(image.chunk(chunk_ref))` (at most `frame::MAX_BULK_FRAME_LEN` bytes) and write
//!    it at once, since the pacer counted it as sent now;
//! 3. [`Transfer::poll_event`] until `None`, for the journal, the rollout and the page;
//! 4. sleep until [`Transfer::poll_timeout`] (a STATUS timeout, or the pacer's next chunk), then
//!    call [`Transfer::handle_timeout`] and drain again.
//!
//! # The rules
//!
//! **The node is the source of truth.** Its STATUS says what is in flash (`flashed`: every chunk
//! below), what it holds in RAM (`have`, bit *i* for chunk `flashed + i`) and what it takes now
//! (`credit`). The transfer keeps no progress of its own that outlives the node's word: a new
//! transfer (after a gateway restart) or a new session (after a node reset or a link drop)
//! resumes at `flashed`, skipping what `have` shows. Nothing starts over, and chunks in flight
//! when a session ended count as never sent (they were sealed for a session that is gone).
//!
//! **First ask, then offer.** A transfer starts with a QUERY (or with the STATUS the session
//! already holds): a node that holds the image carries on where it is, in whatever phase, with
//! no OFFER; one that does not (idle, another image, or `unknown-image` to the QUERY) is
//! offered it. A later STATUS with another image or `idle` while the transfer still needs the
//! node to hold the image means the node lost or never took the offer: OFFER again (at most
//! once per STATUS timeout). A node counting in another chunk size is offered the image again
//! in this transfer's size; it keeps its sectors.
//!
//! **Sending.** Chunks go in index order, only below `credit` and within the image. A chunk a
//! STATUS shows missing goes again before anything new, and only those: selective repeat, never
//! a blind go-back. A chunk is missing when the node lacks it and either
//! - something sent after it is held, in flash or in `have` (a hole: a 0 below the highest 1;
//!   comparing transmission order rather than index keeps a just-resent hole from being sent a
//!   third time on a STATUS that left the node before it arrived; a held chunk that was sent
//!   more than once counts from its first send, since which copy arrived is not known), or
//! - it went out at least one STATUS timeout before the STATUS arrived (a lost tail, which no
//!   later chunk reveals).
//!
//! A chunk the node holds in RAM stays held until it is in flash: a node only forgets its RAM by
//! resetting, which opens a new session.
//!
//! **The STATUS timeout** is RFC 6298's estimate (smoothed round trip plus four deviations,
//! clamped to [`RTO_MIN`]..=[`RTO_MAX`], [`RTO_INITIAL`] before a measure), measured from a
//! QUERY to its STATUS and from the chunk that completed a sector to the STATUS saying it is in
//! flash, never on something sent twice nor across a QUERY (Karn). When no STATUS makes
//! progress within it, the transfer sends a QUERY and doubles it. After
//! [`MAX_UNANSWERED_QUERIES`] QUERYs with no STATUS at all the transfer **stalls**
//! ([`TransferEvent::Stalled`]): no chunk goes, only a QUERY every [`SLOW_QUERY_INTERVAL`], until
//! the node's next STATUS ([`TransferEvent::Resumed`]).
//!
//! **Stale and duplicate STATUS** are ignored. A node's phase and `flashed` only go back across a
//! reset, which opens a new session; so between sessions, a STATUS ranked below one already
//! taken (an earlier phase, fewer bytes in flash) is a copy or was overtaken, and changes
//! nothing. The first STATUS after a new session or an OFFER is taken whatever it says. A node
//! that did go back within a session (it forgot the image) is believed when it says so in
//! answer to a QUERY sent a round-trip estimate (not backed off) or more after the newer word.
//!
//! **Phases** are reported as the node reports them: verified, installing, trial, confirmed.
//! [`Transfer::install`] (once verified) sends INSTALL, [`Transfer::finalize`] (once confirmed)
//! FINALIZE, [`Transfer::abort`] ABORT; each is sent again when a STATUS a timeout later shows it
//! did not take. While the node installs or is on trial it is asked only every
//! [`SLOW_QUERY_INTERVAL`] (it resets and swaps meanwhile; it reports its trial at ACCEPT).
//!
//! **Endings.** A `refused` STATUS for the image ends the transfer with its reason
//! ([`Outcome::Refused`], named by `OtaRefusal::as_str`) and is never retried by the transfer
//! (the rollout decides); `unknown-image` is the one exception, being the answer to a control
//! about an image the node does not hold. `reverted` ends it with its cause. The node going idle
//! ends a FINALIZE ([`Outcome::Finalized`]) or an ABORT ([`Outcome::Aborted`]); after it reported
//! installing, trial or confirmed, the node no longer holding the image is [`Outcome::Lost`].
//!
//! **Pacing.** See [`Pacer`]: chunks (and the OFFER) use at most `ota_share` (default 0.95, at
//! most 0.95) of the line's byte rate, counting each frame's length on the line, with a burst of
//! one chunk; telemetry keeps at least 5 % of the downlink, and an ACK waits behind at most one
//! chunk's time on the line.

mod image;
mod pacer;
mod transfer;

pub use image::{
    CONTROL_LINE_LEN, ChunkRef, Image, ImageError, STATUS_LINE_LEN, chunk_line_len, offer_line_len,
    sealed_line_len,
};
pub use pacer::{DEFAULT_NOMINAL_BAUD, DEFAULT_OTA_SHARE, MAX_OTA_SHARE, MIN_OTA_SHARE, Pacer};
pub use transfer::{
    Control, MAX_UNANSWERED_QUERIES, Outcome, RTO_INITIAL, RTO_MAX, RTO_MIN, SLOW_QUERY_INTERVAL,
    Stage, Transfer, TransferError, TransferEvent, TransferStatus,
};

#[cfg(test)]
mod tests;
