//! The authenticated session of the node link (protocol version 2).
//!
//! A handshake at every HELLO, built from standard parts only (no home-made primitive):
//!
//! ```text
//! node    → HELLO   { uid, boot_id, …, node_eph }        X25519 public key, fresh per HELLO
//! node    → ENROLL  { uid, node_key }                    Ed25519 key the gateway pins
//! gateway → CHALLENGE { boot_id, gw_eph, gw_key, Sign(gw_key,   "outpost/link/2 gateway" ‖ th) }
//! node    → PROOF   { uid, boot_id,      Sign(node_key, "outpost/link/2 node"    ‖ th) }
//! gateway → ACCEPT  (sealed)                             only once the store took the node
//!
//! th   = SHA-256("outpost/link/2 transcript" ‖ uid ‖ boot_id ‖ node_key ‖ node_eph ‖ gw_key ‖ gw_eph)
//! keys = HKDF-SHA-256(salt = th, ikm = X25519(eph, peer eph), info = "outpost/link/2 keys")
//!        → 32 bytes node→gateway ‖ 32 bytes gateway→node
//! ```
//!
//! Both signatures cover both identities and both ephemerals, so neither side can be
//! impersonated or mis-bound (ISO 9798-3 style signed Diffie-Hellman), and every session key is
//! fresh on both sides: a recorded CHALLENGE does not verify against a new HELLO, a recorded PROOF
//! not against a new CHALLENGE.
//!
//! Every later message is **sealed**: after its fields come the low byte of a per-direction
//! counter and an 8-byte tag,
//!
//! ```text
//! tag = HMAC-SHA-256(direction key, counter as u32 LE ‖ message bytes ‖ counter low byte)[..8]
//! ```
//!
//! The counter starts at 1 and rises by one per sealed message; the receiver takes only a counter
//! above the last one it took, rebuilding the full value from its low byte (so up to 255
//! messages in a row may be lost). A seal that verifies under an earlier counter is a replay;
//! one that verifies under none is a forgery (or a bit flip that kept the CRC). Serial lines do
//! not reorder, so a strictly increasing counter loses nothing real.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::wire::{Challenge, Hello, Proof};

/// Bytes of the truncated HMAC-SHA-256 tag of a sealed message (64 bits).
pub const TAG_LEN: usize = 8;

const TRANSCRIPT_LABEL: &[u8] = b"outpost/link/2 transcript";
const GATEWAY_LABEL: &[u8] = b"outpost/link/2 gateway";
const NODE_LABEL: &[u8] = b"outpost/link/2 node";
const KEYS_INFO: &[u8] = b"outpost/link/2 keys";

/// Why a handshake message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// The signature does not verify over this transcript: forged, replayed from another
    /// handshake, or signed with another key.
    BadSignature,
    /// The public key is not a valid Ed25519 point.
    BadKey,
    /// The peer's ephemeral key is a low-order point: the shared secret would be known to anyone.
    WeakEphemeral,
    /// The gateway's key is not the one this node is pinned to.
    UnknownGateway,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::BadSignature => "signature does not verify over this handshake",
            HandshakeError::BadKey => "public key is not a valid Ed25519 key",
            HandshakeError::WeakEphemeral => "ephemeral key is a low-order point",
            HandshakeError::UnknownGateway => "gateway key is not the pinned one",
        })
    }
}

/// What a handshake binds together; both sides sign its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    pub uid: [u8; 8],
    pub boot_id: u32,
    pub node_key: [u8; 32],
    pub node_ephemeral: [u8; 32],
    pub gateway_key: [u8; 32],
    pub gateway_ephemeral: [u8; 32],
}

impl Transcript {
    /// `th`, the SHA-256 of the labelled transcript.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(TRANSCRIPT_LABEL)
            .chain_update(self.uid)
            .chain_update(self.boot_id.to_le_bytes())
            .chain_update(self.node_key)
            .chain_update(self.node_ephemeral)
            .chain_update(self.gateway_key)
            .chain_update(self.gateway_ephemeral)
            .finalize()
            .into()
    }
}

/// The bytes a side signs: its role label, then `th`.
fn signed_bytes(label: &[u8], th: &[u8; 32]) -> ([u8; 64], usize) {
    let mut out = [0u8; 64];
    out[..label.len()].copy_from_slice(label);
    out[label.len()..label.len() + 32].copy_from_slice(th);
    (out, label.len() + 32)
}

fn sign(key: &SigningKey, label: &[u8], th: &[u8; 32]) -> [u8; 64] {
    let (bytes, len) = signed_bytes(label, th);
    key.sign(&bytes[..len]).to_bytes()
}

fn verify(
    key: &[u8; 32],
    label: &[u8],
    th: &[u8; 32],
    signature: &[u8; 64],
) -> Result<(), HandshakeError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| HandshakeError::BadKey)?;
    let (bytes, len) = signed_bytes(label, th);
    // Strict: no malleable signatures, no small-order keys.
    key.verify_strict(&bytes[..len], &Signature::from_bytes(signature))
        .map_err(|_| HandshakeError::BadSignature)
}

fn agree(
    secret: &StaticSecret,
    peer: &[u8; 32],
    th: &[u8; 32],
) -> Result<SessionKeys, HandshakeError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(HandshakeError::WeakEphemeral);
    }
    let mut okm = [0u8; 64];
    // Cannot fail: 64 bytes is far below HKDF-SHA-256's limit of 255 * 32.
    let _ = Hkdf::<Sha256>::new(Some(th), shared.as_bytes()).expand(KEYS_INFO, &mut okm);
    let mut keys = SessionKeys {
        node_to_gateway: [0; 32],
        gateway_to_node: [0; 32],
    };
    keys.node_to_gateway.copy_from_slice(&okm[..32]);
    keys.gateway_to_node.copy_from_slice(&okm[32..]);
    okm.fill(0);
    Ok(keys)
}

/// The two directions' keys of one session.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    node_to_gateway: [u8; 32],
    gateway_to_node: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// The gateway's half: it seals with gateway→node and opens node→gateway.
    #[must_use]
    pub fn gateway(&self) -> (Sealer, Opener) {
        (
            Sealer::new(self.gateway_to_node),
            Opener::new(self.node_to_gateway),
        )
    }

    /// The node's half.
    #[must_use]
    pub fn node(&self) -> (Sealer, Opener) {
        (
            Sealer::new(self.node_to_gateway),
            Opener::new(self.gateway_to_node),
        )
    }
}

/// An X25519 ephemeral key pair, from 32 random bytes the caller draws (the cores never draw
/// randomness themselves).
pub struct Ephemeral {
    secret: StaticSecret,
    public: [u8; 32],
}

impl fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ephemeral")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Ephemeral {
    #[must_use]
    pub fn from_random(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Ephemeral { secret, public }
    }

    #[must_use]
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// The gateway's side of one handshake, between its CHALLENGE and the node's PROOF.
#[derive(Debug)]
pub struct GatewayHandshake {
    transcript: Transcript,
    th: [u8; 32],
    keys: SessionKeys,
}

impl GatewayHandshake {
    /// Answers a HELLO (with its ENROLL's `node_key`): a CHALLENGE signed with the gateway's
    /// node-link key, and the handshake waiting for the node's PROOF.
    pub fn challenge(
        gateway: &SigningKey,
        ephemeral: &Ephemeral,
        hello: &Hello,
        node_key: &[u8; 32],
    ) -> Result<(Challenge, GatewayHandshake), HandshakeError> {
        let transcript = Transcript {
            uid: hello.uid,
            boot_id: hello.boot_id,
            node_key: *node_key,
            node_ephemeral: hello.ephemeral,
            gateway_key: gateway.verifying_key().to_bytes(),
            gateway_ephemeral: ephemeral.public,
        };
        let th = transcript.hash();
        let keys = agree(&ephemeral.secret, &hello.ephemeral, &th)?;
        let challenge = Challenge {
            boot_id: hello.boot_id,
            ephemeral: ephemeral.public,
            gateway_key: transcript.gateway_key,
            signature: sign(gateway, GATEWAY_LABEL, &th),
        };
        Ok((
            challenge,
            GatewayHandshake {
                transcript,
                th,
                keys,
            },
        ))
    }

    #[must_use]
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Whether `proof` answers this handshake (same uid and boot).
    #[must_use]
    pub fn matches(&self, proof: &Proof) -> bool {
        proof.uid == self.transcript.uid && proof.boot_id == self.transcript.boot_id
    }

    /// Checks the node's PROOF: signed with the key it enrolled, over this transcript. Then the
    /// session's keys.
    pub fn finish(&self, proof: &Proof) -> Result<SessionKeys, HandshakeError> {
        if !self.matches(proof) {
            return Err(HandshakeError::BadSignature);
        }
        verify(
            &self.transcript.node_key,
            NODE_LABEL,
            &self.th,
            &proof.signature,
        )?;
        Ok(self.keys.clone())
    }
}

/// The node's side: answers a CHALLENGE to its latest HELLO.
///
/// `pinned` is the gateway key the node is tied to, if any: a CHALLENGE signed by another key
/// is refused.
pub fn node_answer(
    node: &SigningKey,
    uid: [u8; 8],
    boot_id: u32,
    ephemeral: &Ephemeral,
    challenge: &Challenge,
    pinned: Option<&[u8; 32]>,
) -> Result<(Proof, SessionKeys), HandshakeError> {
    if pinned.is_some_and(|p| *p != challenge.gateway_key) {
        return Err(HandshakeError::UnknownGateway);
    }
    let transcript = Transcript {
        uid,
        boot_id,
        node_key: node.verifying_key().to_bytes(),
        node_ephemeral: ephemeral.public,
        gateway_key: challenge.gateway_key,
        gateway_ephemeral: challenge.ephemeral,
    };
    let th = transcript.hash();
    verify(
        &challenge.gateway_key,
        GATEWAY_LABEL,
        &th,
        &challenge.signature,
    )?;
    let keys = agree(&ephemeral.secret, &challenge.ephemeral, &th)?;
    let proof = Proof {
        uid,
        boot_id,
        signature: sign(node, NODE_LABEL, &th),
    };
    Ok((proof, keys))
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8; 32], counter: u32, authenticated: &[u8]) -> HmacSha256 {
    // Cannot fail: HMAC takes keys of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&counter.to_le_bytes());
    mac.update(authenticated);
    mac
}

/// The counter of a direction is spent: the session must be renewed (a new handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSpent;

/// Seals outgoing messages of one direction.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
    sent: u32,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    fn new(key: [u8; 32]) -> Self {
        Sealer { key, sent: 0 }
    }

    /// Messages sealed so far (the last counter used).
    #[must_use]
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Appends the seal to the message in `buf[..len]`; returns the sealed length. `buf` must
    /// have room for [`crate::wire::SEAL_LEN`] more bytes.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, CounterSpent> {
        let counter = self.sent.checked_add(1).ok_or(CounterSpent)?;
        self.sent = counter;
        buf[len] = counter as u8;
        let tag = mac(&self.key, counter, &buf[..=len])
            .finalize()
            .into_bytes();
        buf[len + 1..len + 1 + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
        Ok(len + 1 + TAG_LEN)
    }
}

/// Why a sealed message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// The tag verifies under no counter the receiver would take or has taken: forged, a bit
    /// flipped, or sealed with another session's key.
    Forged,
    /// A genuine message of this session already taken (or older than the last taken): a
    /// replay.
    Replayed,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Forged => "seal does not verify",
            AuthError::Replayed => "replayed message",
        })
    }
}

/// Opens incoming sealed messages of one direction: checks the tag and that the counter rises.
#[derive(Clone)]
pub struct Opener {
    key: [u8; 32],
    last: u32,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Opener {
    fn new(key: [u8; 32]) -> Self {
        Opener { key, last: 0 }
    }

    /// The counter of the last message taken.
    #[must_use]
    pub fn last(&self) -> u32 {
        self.last
    }

    /// Checks a sealed message: `authenticated` is the message bytes up to and including the
    /// counter's low byte, `tag` what followed. On success the counter is taken.
    pub fn open(&mut self, authenticated: &[u8], tag: &[u8; TAG_LEN]) -> Result<(), AuthError> {
        let Some(&low) = authenticated.last() else {
            return Err(AuthError::Forged);
        };
        // The next counter with this low byte: last + 1 ..= last + 256.
        let ahead = u32::from(low.wrapping_sub(self.last as u8).wrapping_sub(1));
        if let Some(counter) = self.last.checked_add(1 + ahead) {
            if mac(&self.key, counter, authenticated)
                .verify_truncated_left(tag)
                .is_ok()
            {
                self.last = counter;
                return Ok(());
            }
        }
        // The latest counter at or below the last one taken with this low byte: a replay, if the
        // tag verifies there. Worth the second MAC only to tell an operator which it is.
        let behind = u32::from((self.last as u8).wrapping_sub(low));
        if let Some(counter) = self.last.checked_sub(behind).filter(|&c| c > 0) {
            if mac(&self.key, counter, authenticated)
                .verify_truncated_left(tag)
                .is_ok()
            {
                return Err(AuthError::Replayed);
            }
        }
        Err(AuthError::Forged)
    }
}
