//! Files users name (the manifest, palettes, LoRAs, model files) are read only when they
//! are regular files of a sane size: a FIFO or a device named as a LoRA would make hashing
//! wait forever, and a runaway file would make parsing take all memory.
//!
//! Invariant: every read of a user-named file goes through [`check`] first (symlinks are
//! followed: what matters is what would be read).

use std::fmt;
use std::path::{Path, PathBuf};

/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest palette file read (a palette is a few hundred bytes).
pub const MAX_PALETTE_BYTES: u64 = 1 << 20;
/// Largest LoRA file read (SDXL LoRAs of high rank are about 1.7 GB).
pub const MAX_LORA_BYTES: u64 = 8 << 30;
/// Largest model weight file read (an fp32 SDXL checkpoint is about 14 GB).
pub const MAX_MODEL_FILE_BYTES: u64 = 64 << 30;

/// Why a named file is not read.
#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("{} is {kind}, not a regular file", path.display())]
    NotAFile { path: PathBuf, kind: FileKind },
    #[error("{} is {size} bytes, more than the {limit} bytes a {what} may have", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
        what: &'static str,
    },
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a path names when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a named pipe (FIFO)",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "not a regular file",
        })
    }
}

fn kind_of(file_type: std::fs::FileType) -> Option<FileKind> {
    if file_type.is_file() {
        return None;
    }
    if file_type.is_dir() {
        return Some(FileKind::Directory);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some(FileKind::Fifo);
        }
        if file_type.is_socket() {
            return Some(FileKind::Socket);
        }
        if file_type.is_char_device() {
            return Some(FileKind::CharDevice);
        }
        if file_type.is_block_device() {
            return Some(FileKind::BlockDevice);
        }
    }
    Some(FileKind::Other)
}

/// The size of `path` when it is a regular file of at most `limit` bytes. Never opens the
/// file, so it cannot block on a FIFO or a device.
pub fn check(path: &Path, limit: u64, what: &'static str) -> Result<u64, InputFileError> {
    checked_metadata(path, limit, what).map(|m| m.len())
}

/// [`check`], returning the file's metadata (for callers that need its time too).
pub fn checked_metadata(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<std::fs::Metadata, InputFileError> {
    let metadata = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => InputFileError::Missing {
            path: path.to_path_buf(),
        },
        _ => InputFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if let Some(kind) = kind_of(metadata.file_type()) {
        return Err(InputFileError::NotAFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    if metadata.len() > limit {
        return Err(InputFileError::TooLarge {
            path: path.to_path_buf(),
            size: metadata.len(),
            limit,
            what,
        });
    }
    Ok(metadata)
}

/// `path`'s text, after [`check`].
pub fn read_to_string(
    path: &Path,
    limit: u64,
    what: &'static str,
) -> Result<String, InputFileError> {
    check(path, limit, what)?;
    std::fs::read_to_string(path).map_err(|source| InputFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// What `path` is when it exists and is not a regular file (a directory included); `None`
/// for a regular file or a missing path.
pub fn non_file_kind(path: &Path) -> Option<FileKind> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| kind_of(m.file_type()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.hex");
        std::fs::write(&file, "ff0000\n").unwrap();
        assert_eq!(check(&file, 100, "palette").unwrap(), 7);
        let error = check(&file, 3, "palette").unwrap_err().to_string();
        assert!(
            error.contains("more than the 3 bytes a palette may have"),
            "{error}"
        );
        let error = check(dir.path(), 100, "palette").unwrap_err().to_string();
        assert!(error.contains("is a directory"), "{error}");
        let error = check(&dir.path().join("nope"), 100, "palette").unwrap_err();
        assert!(matches!(error, InputFileError::Missing { .. }), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("lora.safetensors");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = check(&fifo, u64::MAX, "LoRA").unwrap_err().to_string();
        assert!(error.contains("named pipe (FIFO)"), "{error}");
        assert_eq!(non_file_kind(&fifo), Some(FileKind::Fifo));
        let error = check(Path::new("/dev/zero"), u64::MAX, "LoRA")
            .unwrap_err()
            .to_string();
        assert!(error.contains("character device"), "{error}");
    }
}
