//! The node's own settings in flash: its identity key, made once from the board's entropy at the
//! first boot, and the gateway key it is tied to, if any. Kept in two sectors
//! (`layout::NODE_CONFIG_A` and `_B`) written alternately, so a write cut short always leaves the
//! previous copy.
//!
//! Design: plain functions over two [`RecordFlash`] sectors, like [`crate::diag`]; the board
//! calls [`provision`] once per boot before the link starts and nothing here runs again unless
//! the settings change. Zero-touch: a node fresh from the factory has blank sectors, draws its
//! key from the ring oscillator (passed in as `entropy`), writes it, and from then on presents
//! the same public key at every boot; no shared secret is ever flashed.
//!
//! | bytes of a copy | meaning |
//! |---|---|
//! | 0..4 | magic `ONS1` |
//! | 4..8 | sequence number (little endian): the copy with the higher one is current |
//! | 8..40 | the Ed25519 secret key |
//! | 40 | flags: bit 0, a gateway key follows |
//! | 41..73 | the gateway's node-link public key (`FF` when none) |
//! | 73..76 | reserved, `FF` |
//! | 76..80 | commit mark: `00 00 00 00` once the copy is whole |
//!
//! A copy is valid when its magic and commit mark are in place: the record is programmed before
//! its mark, so a valid copy is always whole, and a cut erase or program leaves a copy that is
//! not valid and is ignored.

use crate::boot::{RecordError, RecordFlash};

const MAGIC: [u8; 4] = *b"ONS1";
/// Bytes of a copy, commit mark included.
pub const COPY_LEN: usize = 80;
const MARK_AT: usize = COPY_LEN - 4;
const COMMITTED: [u8; 4] = [0; 4];
const HAS_GATEWAY_KEY: u8 = 0x01;

/// What the node keeps about itself across boots.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// The node's Ed25519 secret key (its identity: the gateway pins the public half).
    pub secret_key: [u8; 32],
    /// The gateway node-link key this node is tied to; `None`: any gateway may enrol it.
    pub gateway_key: Option<[u8; 32]>,
}

impl core::fmt::Debug for Settings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Settings")
            .field("secret_key", &"<secret>")
            .field("gateway_key", &self.gateway_key)
            .finish()
    }
}

/// What [`provision`] did at this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// The settings were in flash.
    Loaded,
    /// No valid copy: a new key was made from the entropy and written (a first boot, or both
    /// copies lost).
    Created,
}

/// The node's two settings sectors.
#[derive(Debug)]
pub struct SettingsStore<A, B> {
    pub a: A,
    pub b: B,
}

impl<A: RecordFlash, B: RecordFlash> SettingsStore<A, B> {
    pub fn new(a: A, b: B) -> Self {
        SettingsStore { a, b }
    }

    /// The current settings and their sequence number, if either copy is valid.
    pub fn load(&mut self) -> Result<Option<(Settings, u32)>, RecordError> {
        let a = read_copy(&mut self.a)?;
        let b = read_copy(&mut self.b)?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    /// Writes `settings` as the new current copy, into the sector that does not hold the
    /// current one: a cut write leaves the old settings in force.
    pub fn store(&mut self, settings: &Settings) -> Result<(), RecordError> {
        let a = read_copy(&mut self.a)?.map(|(_, seq)| seq);
        let b = read_copy(&mut self.b)?.map(|(_, seq)| seq);
        let newest = a.max(b);
        let seq = newest.map_or(1, |s| s.wrapping_add(1));
        let bytes = encode(settings, seq);
        // Overwrite the copy that is not the newest (A when neither is valid).
        if a.is_some() && a == newest {
            write_copy(&mut self.b, &bytes)
        } else {
            write_copy(&mut self.a, &bytes)
        }
    }
}

/// Loads the node's settings, or makes them at a first boot: the secret key is `entropy` (32
/// bytes from the board's random source; any 32 bytes are a valid Ed25519 secret).
pub fn provision<A: RecordFlash, B: RecordFlash>(
    store: &mut SettingsStore<A, B>,
    entropy: [u8; 32],
) -> Result<(Settings, Provisioned), RecordError> {
    if let Some((settings, _)) = store.load()? {
        return Ok((settings, Provisioned::Loaded));
    }
    let settings = Settings {
        secret_key: entropy,
        gateway_key: None,
    };
    store.store(&settings)?;
    Ok((settings, Provisioned::Created))
}

fn encode(settings: &Settings, seq: u32) -> [u8; MARK_AT] {
    let mut bytes = [0xFF; MARK_AT];
    bytes[0..4].copy_from_slice(&MAGIC);
    bytes[4..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..40].copy_from_slice(&settings.secret_key);
    if let Some(key) = settings.gateway_key {
        bytes[40] = HAS_GATEWAY_KEY;
        bytes[41..73].copy_from_slice(&key);
    } else {
        bytes[40] = 0;
    }
    bytes
}

fn read_copy<F: RecordFlash>(flash: &mut F) -> Result<Option<(Settings, u32)>, RecordError> {
    let mut bytes = [0u8; COPY_LEN];
    flash.read(0, &mut bytes)?;
    if bytes[0..4] != MAGIC || bytes[MARK_AT..] != COMMITTED {
        return Ok(None);
    }
    let mut secret_key = [0u8; 32];
    secret_key.copy_from_slice(&bytes[8..40]);
    let gateway_key = (bytes[40] & HAS_GATEWAY_KEY != 0).then(|| {
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[41..73]);
        key
    });
    let seq = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    Ok(Some((
        Settings {
            secret_key,
            gateway_key,
        },
        seq,
    )))
}

fn write_copy<F: RecordFlash>(flash: &mut F, bytes: &[u8; MARK_AT]) -> Result<(), RecordError> {
    flash.erase()?;
    flash.program(0, bytes)?;
    flash.program(MARK_AT as u32, &COMMITTED)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use super::*;
    use crate::diag::RamSector;

    fn store() -> SettingsStore<RamSector, RamSector> {
        SettingsStore::new(RamSector::default(), RamSector::default())
    }

    #[test]
    fn a_first_boot_makes_the_key_and_later_boots_load_the_same_one() {
        let mut s = store();
        let (first, how) = provision(&mut s, [7; 32]).unwrap();
        assert_eq!(how, Provisioned::Created);
        assert_eq!(first.secret_key, [7; 32]);
        // Another boot draws other entropy, but keeps its identity.
        let (again, how) = provision(&mut s, [9; 32]).unwrap();
        assert_eq!(how, Provisioned::Loaded);
        assert_eq!(again, first);
    }

    #[test]
    fn writes_alternate_and_the_newest_copy_wins() {
        let mut s = store();
        provision(&mut s, [1; 32]).unwrap();
        let pinned = Settings {
            secret_key: [1; 32],
            gateway_key: Some([2; 32]),
        };
        s.store(&pinned).unwrap();
        // The first copy went to A, the second to B; B is newer.
        assert_eq!(read_copy(&mut s.a).unwrap().unwrap().1, 1);
        assert_eq!(read_copy(&mut s.b).unwrap().unwrap().1, 2);
        assert_eq!(s.load().unwrap().unwrap().0, pinned);
        let unpinned = Settings {
            gateway_key: None,
            ..pinned.clone()
        };
        s.store(&unpinned).unwrap();
        assert_eq!(read_copy(&mut s.a).unwrap().unwrap().1, 3);
        assert_eq!(s.load().unwrap().unwrap().0, unpinned);
    }

    #[test]
    fn a_copy_cut_before_its_commit_mark_leaves_the_previous_settings() {
        let mut s = store();
        provision(&mut s, [1; 32]).unwrap();
        // A write into B that stopped after the record, before the mark.
        let newer = encode(
            &Settings {
                secret_key: [1; 32],
                gateway_key: Some([5; 32]),
            },
            2,
        );
        s.b.erase().unwrap();
        s.b.program(0, &newer).unwrap();
        let (current, seq) = s.load().unwrap().unwrap();
        assert_eq!(seq, 1);
        assert_eq!(current.gateway_key, None);
        // The next write goes to B again (A still holds the newest valid copy).
        s.store(&current).unwrap();
        assert_eq!(read_copy(&mut s.b).unwrap().unwrap().1, 2);
    }

    #[test]
    fn noise_in_both_sectors_is_not_taken_for_a_key() {
        let mut s = store();
        s.a.program(0, &[0x00; COPY_LEN]).unwrap();
        s.b.program(0, b"ONS1garbage").unwrap();
        assert_eq!(s.load().unwrap(), None);
        let (settings, how) = provision(&mut s, [3; 32]).unwrap();
        assert_eq!((settings.secret_key, how), ([3; 32], Provisioned::Created));
    }

    #[test]
    fn the_debug_form_never_shows_the_key() {
        let settings = Settings {
            secret_key: [0xAB; 32],
            gateway_key: None,
        };
        assert!(!format!("{settings:?}").contains("171"));
        assert!(format!("{settings:?}").contains("<secret>"));
    }
}
