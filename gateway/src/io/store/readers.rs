//! Read connections, opened once and reused: the API, the cost meter and the uplink each read the
//! store often (every status request, every tally, every batch), and opening a SQLite connection
//! each time costs a file open, a schema read and a fresh page cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Reader, StoreError};

/// Idle connections at most; a burst beyond it opens more and closes them after.
const MAX_IDLE: usize = 4;

/// A pool of read connections to one store file. Cheap to clone; every clone is the same pool.
#[derive(Debug, Clone)]
pub struct Readers {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Reader>>>,
}

impl Readers {
    #[must_use]
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: Arc::new(path.to_owned()),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with a read connection on a blocking thread. A connection whose read failed is
    /// closed rather than reused (the next read opens a fresh one).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let idle = pool.lock().pop();
            let reader = match idle {
                Some(reader) => reader,
                None => Reader::open(&pool.path)?,
            };
            let result = f(&reader);
            if result.is_ok() {
                let mut idle = pool.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(reader);
                }
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Corrupt(format!("reader panicked: {e}"))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Reader>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Idle connections now (for tests).
    #[must_use]
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::store::Store;

    #[tokio::test]
    async fn a_connection_is_reused_and_one_whose_read_failed_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let _store = Store::open(&path).unwrap();
        let readers = Readers::new(&path);
        assert_eq!(readers.idle(), 0);
        for _ in 0..3 {
            let totals = readers.read(|r| r.totals()).await.unwrap();
            assert_eq!(totals.nodes, 0);
        }
        assert_eq!(readers.idle(), 1, "three reads, one connection");
        let failed: Result<(), _> = readers
            .read(|_| Err(StoreError::Corrupt("broken".into())))
            .await;
        assert!(failed.is_err());
        assert_eq!(readers.idle(), 0, "a failed reader is dropped");
    }

    #[tokio::test]
    async fn a_missing_store_is_an_error_not_a_panic() {
        let readers = Readers::new(Path::new("/nonexistent/outpost.db"));
        assert!(readers.read(|r| r.totals()).await.is_err());
    }
}
