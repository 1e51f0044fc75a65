//! Trained zstd dictionaries: training, loading, and the set a decoder knows.
//!
//! A dictionary is a standard zstd dictionary (magic `37 A4 30 EC`, then its 32-bit id). Its id is
//! the one zstd's trainer derives from the dictionary's content, so the same training data gives
//! the same dictionary and id on every run; the id travels in each batch header. Ids are 31-bit
//! hashes: the cloud should keep one [`Dictionaries`] set per gateway, where a clash between two
//! different dictionaries is refused by [`Dictionaries::insert`] rather than silently mixed up.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::num::NonZeroU32;
use std::sync::Arc;

use zstd::dict::{DecoderDictionary, EncoderDictionary};

use crate::ZSTD_LEVEL;

/// Upper bound on a trained dictionary's size. Large enough for the names and column layout that
/// repeat in every batch of a site; small enough to ship to the cloud once and keep in memory per
/// gateway.
pub const MAX_DICTIONARY_LEN: usize = 16 * 1024;

/// Fewest samples [`train_dictionary`] accepts: zstd's trainer needs several to find what repeats.
pub const MIN_TRAINING_SAMPLES: usize = 8;

/// zstd's dictionary magic number, `0xEC30A437` little-endian (RFC 8878 §5).
const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xA4, 0x30, 0xEC];

/// A zstd dictionary with its id, prepared for compression and decompression. Cheap to clone.
#[derive(Clone)]
pub struct Dictionary {
    inner: Arc<Prepared>,
}

struct Prepared {
    id: NonZeroU32,
    bytes: Vec<u8>,
    encoder: EncoderDictionary<'static>,
    decoder: DecoderDictionary<'static>,
}

/// Why bytes are not a usable dictionary.
#[derive(Debug, thiserror::Error)]
pub enum DictionaryError {
    #[error("not a zstd dictionary: missing the dictionary magic number")]
    NotZstdDictionary,
    #[error("the dictionary has id 0, which batches use to mean \"no dictionary\"")]
    ZeroId,
    #[error("zstd rejected the dictionary: {0}")]
    Rejected(#[source] io::Error),
}

impl Dictionary {
    /// Loads a dictionary from its bytes (as [`Dictionary::as_bytes`] gave them).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Dictionary, DictionaryError> {
        if bytes.len() < 8 || bytes[..4] != ZSTD_DICT_MAGIC {
            return Err(DictionaryError::NotZstdDictionary);
        }
        let id = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let id = NonZeroU32::new(id).ok_or(DictionaryError::ZeroId)?;
        let encoder =
            EncoderDictionary::try_copy(&bytes, ZSTD_LEVEL).map_err(DictionaryError::Rejected)?;
        let decoder = DecoderDictionary::try_copy(&bytes).map_err(DictionaryError::Rejected)?;
        Ok(Dictionary {
            inner: Arc::new(Prepared {
                id,
                bytes,
                encoder,
                decoder,
            }),
        })
    }

    /// The id that batches compressed with this dictionary carry in their header.
    #[must_use]
    pub fn id(&self) -> NonZeroU32 {
        self.inner.id
    }

    /// The dictionary as bytes, to store or send to the cloud.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    pub(crate) fn encoder(&self) -> &EncoderDictionary<'static> {
        &self.inner.encoder
    }

    pub(crate) fn decoder(&self) -> &DecoderDictionary<'static> {
        &self.inner.decoder
    }
}

impl fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &self.inner.id)
            .field("len", &self.inner.bytes.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Dictionary {
    fn eq(&self, other: &Dictionary) -> bool {
        self.inner.bytes == other.inner.bytes
    }
}

impl Eq for Dictionary {}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{got} training samples; at least {MIN_TRAINING_SAMPLES} are needed")]
    TooFewSamples { got: usize },
    #[error("zstd could not train a dictionary from these samples: {0}")]
    Zstd(#[source] io::Error),
    #[error("the trained dictionary is unusable: {0}")]
    Unusable(#[source] DictionaryError),
}

/// Trains a dictionary of at most [`MAX_DICTIONARY_LEN`] bytes from `samples`: decompressed bodies
/// of the site's past batches (see [`crate::raw_body`]), oldest first. Deterministic: the same
/// samples in the same order give the same dictionary.
pub fn train_dictionary<S: AsRef<[u8]>>(samples: &[S]) -> Result<Dictionary, TrainError> {
    if samples.len() < MIN_TRAINING_SAMPLES {
        return Err(TrainError::TooFewSamples { got: samples.len() });
    }
    let bytes = zstd::dict::from_samples(samples, MAX_DICTIONARY_LEN).map_err(TrainError::Zstd)?;
    Dictionary::from_bytes(bytes).map_err(TrainError::Unusable)
}

/// The dictionaries a decoder knows, by id.
#[derive(Debug, Clone, Default)]
pub struct Dictionaries {
    by_id: BTreeMap<u32, Dictionary>,
}

/// Two different dictionaries with the same id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a different dictionary with id {id} is already known")]
pub struct DictionaryIdClash {
    pub id: NonZeroU32,
}

impl Dictionaries {
    /// No dictionaries: decodes batches compressed without one.
    #[must_use]
    pub fn new() -> Dictionaries {
        Dictionaries::default()
    }

    /// Adds a dictionary. Adding the same dictionary again is a no-op; a different dictionary
    /// under an id already known is refused.
    pub fn insert(&mut self, dictionary: Dictionary) -> Result<(), DictionaryIdClash> {
        let id = dictionary.id();
        match self.by_id.get(&id.get()) {
            Some(known) if *known != dictionary => Err(DictionaryIdClash { id }),
            Some(_) => Ok(()),
            None => {
                self.by_id.insert(id.get(), dictionary);
                Ok(())
            }
        }
    }

    #[must_use]
    pub fn get(&self, id: NonZeroU32) -> Option<&Dictionary> {
        self.by_id.get(&id.get())
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl From<Dictionary> for Dictionaries {
    fn from(dictionary: Dictionary) -> Dictionaries {
        let mut set = Dictionaries::new();
        set.by_id.insert(dictionary.id().get(), dictionary);
        set
    }
}
