//! Atomic file writes: every file pixelgen writes (cache entries, the lock file, the
//! index, atlases, stamps) goes through a temporary file in the same folder and a rename,
//! so that a crash, a `kill -9` or a concurrent reader never sees a partial file.

//!
//! Invariant: a temporary file is named `.tmp-pixelgen-<pid>-<random>` after the process
//! that writes it, so that [`remove_litter`] can tell the files of a killed process (which
//! it removes) from those of a live one (which may be renamed any moment).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Every temporary file pixelgen writes starts with this.
pub const TEMP_PREFIX: &str = ".tmp-pixelgen-";

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename,
/// so that a crash or a concurrent reader never sees a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Removes the temporary files that killed processes left in `dir` and its folders (two
/// levels down: the cache's `ab/` and `raw/ab/`), and returns them with their sizes.
/// Files of live processes, this one's included, are kept; files named before the pid was
/// part of the name are removed once they are an hour old.
pub fn remove_litter(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut removed = Vec::new();
    let mut folders = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if file_type.is_dir() && depth < 2 {
                folders.push((path, depth + 1));
                continue;
            }
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
                continue;
            };
            if !file_type.is_file() || !writer_is_gone(rest, &entry) {
                continue;
            }
            let size = entry.metadata().map_or(0, |m| m.len());
            if std::fs::remove_file(&path).is_ok() {
                removed.push((path, size));
            }
        }
    }
    removed.sort();
    removed
}

/// Whether the process that wrote a temporary file (`<pid>-<random>` after the prefix) is
/// gone.
fn writer_is_gone(rest: &str, entry: &std::fs::DirEntry) -> bool {
    match rest
        .split_once('-')
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
    {
        Some(pid) => pid != std::process::id() && !process_is_alive(pid),
        None => entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600)),
    }
}

#[cfg(unix)]
fn process_is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks that the process exists; EPERM means it does, as another user's.
    // SAFETY: kill with signal 0 sends nothing.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_is_alive(_pid: u32) -> bool {
    // Without a cheap check, keep the file: litter is better than a broken write.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file.txt");
        write_atomically(&path, b"x").unwrap();
        write_atomically(&path, b"y").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"y");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[cfg(unix)]
    #[test]
    fn litter_of_dead_writers_is_removed_and_live_writers_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ab");
        std::fs::create_dir_all(sub.join("cd/ef")).unwrap();
        // A process that has exited: its pid is free (until reused, which is rare here).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_file = sub.join(format!("{TEMP_PREFIX}{dead}-abc"));
        std::fs::write(&dead_file, b"partial").unwrap();
        let mine = sub.join(format!("{TEMP_PREFIX}{}-def", std::process::id()));
        std::fs::write(&mine, b"in progress").unwrap();
        let init = sub.join(format!("{TEMP_PREFIX}1-ghi"));
        std::fs::write(&init, b"pid 1 is alive").unwrap();
        let fresh_old_style = sub.join(format!("{TEMP_PREFIX}xyz"));
        std::fs::write(&fresh_old_style, b"young").unwrap();
        // cache/raw/ab/ is two levels down; nothing pixelgen writes is deeper.
        let too_deep = sub.join("cd/ef").join(format!("{TEMP_PREFIX}{dead}-deep"));
        std::fs::write(&too_deep, b"x").unwrap();
        let entry = dir.path().join("ab/01.png");
        std::fs::write(&entry, b"a cache entry").unwrap();

        let removed = remove_litter(dir.path());
        assert_eq!(removed, vec![(dead_file.clone(), 7)]);
        assert!(!dead_file.exists());
        for kept in [&mine, &init, &fresh_old_style, &too_deep, &entry] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }
}
