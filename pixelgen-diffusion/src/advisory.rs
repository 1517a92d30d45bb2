//! An exclusive advisory lock on a file, as every pixelgen lock is: the machine-wide
//! device lock, the cache's generation lock, and the warm server's instance lock. Held
//! until dropped; the operating system releases it when the process dies, so a killed
//! build never leaves a stale lock behind. No candle: compiled in every build.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// An exclusive lock on the file at [`AdvisoryLock::path`], held until dropped.
#[derive(Debug)]
pub struct AdvisoryLock {
    _file: File,
    path: PathBuf,
}

impl AdvisoryLock {
    /// Waits for the lock on `path`, creating the file if needed (its contents are never
    /// touched).
    pub fn acquire(path: &Path) -> io::Result<AdvisoryLock> {
        let file = open(path)?;
        file.lock()?;
        Ok(AdvisoryLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock on `path` if no one holds it; `Ok(None)` if someone does.
    pub fn try_acquire(path: &Path) -> io::Result<Option<AdvisoryLock>> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(AdvisoryLock {
                _file: file,
                path: path.to_path_buf(),
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_excludes_others_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = AdvisoryLock::acquire(&path).unwrap();
        assert_eq!(held.path(), path);
        assert!(AdvisoryLock::try_acquire(&path).unwrap().is_none());
        drop(held);
        let again = AdvisoryLock::try_acquire(&path).unwrap();
        assert!(again.is_some());
    }

    #[test]
    fn a_lock_in_a_missing_folder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AdvisoryLock::acquire(&dir.path().join("no/such/x.lock")).is_err());
    }
}
