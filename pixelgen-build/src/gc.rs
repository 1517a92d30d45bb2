//! `cargo pixelgen gc`: removes the cache entries that no sprite uses any more — finished
//! frames and raw images left behind when prompts, seeds or models changed — and the
//! temporary files of killed runs.
//!
//! Invariants:
//! - A cache may serve several crates of a workspace: every crate whose cache it is counts
//!   ([`cache_users`]), not only the one gc was called for.
//! - A finished frame is kept when any user's `sprites.lock` names it (the committed
//!   truth, even while the manifest says otherwise) or any user's current plan does. A raw
//!   image is kept when any current plan names it; when some user's manifest cannot be
//!   planned, no raw image is removed at all.
//! - A trained LoRA (`lora/<64 hex>.safetensors`) is kept when any user's lock or current
//!   plan names its key.
//! - Only entry files (`ab/<64 hex>.png`, `raw/ab/<64 hex>.png`,
//!   `lora/<64 hex>.safetensors`) are removed, under the cache lock, so no build writes
//!   meanwhile.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pixelgen_diffusion::advisory::AdvisoryLock;

use crate::cache::Cache;
use crate::environment::Environment;
use crate::error::Error;
use crate::key::FileHasher;
use crate::lock::LockFile;
use crate::pipeline::{MANIFEST_FILE, Project, Session};

/// What one collection did (or, dry, would do).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Finished frames no lock or plan names, with their sizes.
    pub frames: Vec<(PathBuf, u64)>,
    /// Raw images no plan names.
    pub raw: Vec<(PathBuf, u64)>,
    /// Trained LoRAs no lock or plan names.
    pub loras: Vec<(PathBuf, u64)>,
    pub kept_loras: usize,
    /// Entries kept.
    pub kept_frames: usize,
    pub kept_raw: usize,
    /// Temporary files of killed runs that were removed.
    pub litter: Vec<(PathBuf, u64)>,
    /// Why raw images were all kept: the manifests that could not be planned.
    pub unplanned: Vec<String>,
}

impl GcReport {
    pub fn freed_bytes(&self) -> u64 {
        self.frames
            .iter()
            .chain(&self.raw)
            .chain(&self.loras)
            .chain(&self.litter)
            .map(|(_, size)| size)
            .sum()
    }
}

/// The projects of the cargo workspace around `crate_dir` that use `cache_dir`: each member
/// with a `sprites.ron` whose cache it is (the crate itself always, if it has one).
pub fn cache_users(
    crate_dir: &Path,
    cache_dir: &Path,
    environment: &Environment,
) -> Result<Vec<Project>, Error> {
    let metadata = crate::pipeline::workspace_of(crate_dir)?;
    let same = |a: &Path, b: &Path| {
        std::fs::canonicalize(a)
            .ok()
            .zip(std::fs::canonicalize(b).ok())
            .is_some_and(|(a, b)| a == b)
    };
    let mut dirs: Vec<PathBuf> = metadata
        .workspace_packages()
        .iter()
        .filter_map(|p| {
            p.manifest_path
                .parent()
                .map(|d| d.as_std_path().to_path_buf())
        })
        .collect();
    dirs.push(crate_dir.to_path_buf());
    let mut users: Vec<Project> = Vec::new();
    for dir in dirs {
        if !dir.join(MANIFEST_FILE).is_file() {
            continue;
        }
        let project = Project::discover(&dir, None, environment, None)?;
        if same(&project.cache_dir, cache_dir)
            && !users
                .iter()
                .any(|u| same(&u.manifest_path, &project.manifest_path))
        {
            users.push(project);
        }
    }
    Ok(users)
}

/// Removes (or with `dry_run`, lists) the entries of the cache in `cache_dir` that none of
/// `users` names.
pub fn collect(
    cache_dir: &Path,
    users: &[Project],
    environment: &Environment,
    dry_run: bool,
) -> Result<GcReport, Error> {
    let cache = Cache::new(cache_dir);
    let cache_error = |source| Error::Cache {
        path: cache_dir.to_path_buf(),
        source,
    };
    let lock_path = cache.prepare().map_err(cache_error)?;
    let _lock = AdvisoryLock::acquire(&lock_path).map_err(cache_error)?;
    let mut report = GcReport::default();
    if !dry_run {
        report.litter = crate::atomic::remove_litter(cache_dir);
    }

    let mut frames: HashSet<String> = HashSet::new();
    let mut raw: HashSet<String> = HashSet::new();
    let mut loras: HashSet<String> = HashSet::new();
    for project in users {
        let lock = LockFile::load(&project.lock_path)?;
        frames.extend(lock.sprites.values().flat_map(|s| s.keys.iter().cloned()));
        loras.extend(lock.trained_loras.values().map(|l| l.key.clone()));
        // Offline: hashes of absent LoRAs and models come from the lock file, and
        // nothing is downloaded.
        match Session::open(project.clone(), FileHasher::in_memory(), environment, true) {
            Ok(session) => {
                loras.extend(session.plan.loras.iter().map(|t| t.key.to_hex()));
                for frame in session.plan.sprites.iter().flat_map(|p| &p.frames) {
                    frames.insert(frame.key.to_hex());
                    if let Some(key) = frame.raw {
                        raw.insert(key.to_hex());
                    }
                }
            }
            Err(error) => report
                .unplanned
                .push(format!("{}: {error}", project.manifest_path.display())),
        }
    }

    for (path, key, size) in entries(cache_dir) {
        if frames.contains(&key) {
            report.kept_frames += 1;
        } else {
            report.frames.push((path, size));
        }
    }
    for (path, key, size) in entries(&cache_dir.join(crate::cache::RAW_DIR)) {
        if raw.contains(&key) || !report.unplanned.is_empty() {
            report.kept_raw += 1;
        } else {
            report.raw.push((path, size));
        }
    }
    for (path, key, size) in lora_entries(&cache_dir.join(crate::cache::LORA_DIR)) {
        if loras.contains(&key) || !report.unplanned.is_empty() {
            report.kept_loras += 1;
        } else {
            report.loras.push((path, size));
        }
    }
    if !dry_run {
        for (path, _) in report.frames.iter().chain(&report.raw).chain(&report.loras) {
            std::fs::remove_file(path).map_err(|source| Error::Cache {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(report)
}

/// Every trained LoRA `<dir>/<64 hex>.safetensors`: its path, key and size, sorted.
fn lora_entries(dir: &Path) -> Vec<(PathBuf, String, u64)> {
    let mut found: Vec<(PathBuf, String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|file| file.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|file| {
            let name = file.file_name();
            let key = name.to_str()?.strip_suffix(".safetensors")?;
            is_hex(key, 64).then(|| {
                let size = file.metadata().map_or(0, |m| m.len());
                (file.path(), key.to_owned(), size)
            })
        })
        .collect();
    found.sort();
    found
}

/// Whether `s` is `len` lowercase hex digits (how keys are written in file names).
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every entry file `<dir>/ab/<64 hex>.png`: its path, key and size, sorted.
fn entries(dir: &Path) -> Vec<(PathBuf, String, u64)> {
    let mut found = Vec::new();
    let Ok(folders) = std::fs::read_dir(dir) else {
        return found;
    };
    for folder in folders.flatten() {
        let name = folder.file_name();
        let Some(prefix) = name.to_str().filter(|n| is_hex(n, 2)) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(folder.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(key) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".png"))
                .filter(|k| is_hex(k, 64) && k.starts_with(prefix))
            else {
                continue;
            };
            if file.file_type().is_ok_and(|t| t.is_file()) {
                let size = file.metadata().map_or(0, |m| m.len());
                found.push((file.path(), key.to_owned(), size));
            }
        }
    }
    found.sort();
    found
}
