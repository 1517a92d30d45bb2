//! Finding a Stable Diffusion model's files, without loading them: a path (a diffusers
//! folder or a single `.safetensors` checkpoint) or a Hugging Face id in the local hub
//! cache. The planner uses this to put the model's identity in each key; the Diffusion
//! backend to load it. It needs no candle, so keys are the same with or without it.

use std::path::{Path, PathBuf};

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A diffusers folder (`model_index.json`, `unet/`, `vae/`, …).
    Folder(PathBuf),
    /// A single `.safetensors` checkpoint in the original LDM/SGM key layout.
    SingleFile(PathBuf),
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Folder(p) | ModelLocation::SingleFile(p) => p,
        }
    }

    /// The files whose contents decide the model's outputs, sorted: weights, configs and
    /// tokenizers. Pickle files are never part of a model pixelgen loads, so not listed.
    pub fn content_files(&self) -> Vec<PathBuf> {
        match self {
            ModelLocation::SingleFile(file) => vec![file.clone()],
            ModelLocation::Folder(dir) => {
                let mut files = Vec::new();
                collect_files(dir, 0, &mut files);
                files.sort();
                files
            }
        }
    }
}

fn collect_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    // A diffusers folder is two levels deep; deeper trees are not part of a model.
    if depth > 2 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, depth + 1, out);
        } else if name.ends_with(".safetensors") || name.ends_with(".json") || name == "merges.txt"
        {
            out.push(path);
        }
    }
}

/// The Hugging Face hub cache (shared with Python tools) and huggingface_hub's offline
/// switch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HubSettings {
    /// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME` (or `~/.cache`)
    /// `/huggingface/hub`; `None` without any of them.
    pub cache_dir: Option<PathBuf>,
    /// False when `HF_HUB_OFFLINE` is set.
    pub downloads_allowed: bool,
    /// `HF_ENDPOINT`: another hub (a mirror); `None` is huggingface.co.
    pub endpoint: Option<String>,
    /// `HF_TOKEN`, for gated or private repositories; without it, the token file that
    /// `huggingface-cli login` wrote beside the cache, if any.
    pub token: Option<Secret>,
}

/// A value that is never printed: its `Debug` says only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(
        "model `{model}` not found; looked in:\n  {searched}\nhelp: give a path to a diffusers folder or a .safetensors file (relative to sprites.ron), or a Hugging Face id whose files are in the Hugging Face cache (`huggingface-cli download {model}`)"
    )]
    NotFound { model: String, searched: String },
    #[error(
        "{}: pickle checkpoints (.ckpt, .pt, .pth, .bin) are refused: loading one can run arbitrary code\nhelp: use the model's .safetensors files, or convert once in Python: `safetensors.torch.save_file(torch.load(path, weights_only=True), \"model.safetensors\")`",
        path.display()
    )]
    Pickle { path: PathBuf },
    #[error("{}: a single-file model must be a .safetensors checkpoint", path.display())]
    NotSafetensors { path: PathBuf },
}

const PICKLE_EXTENSIONS: [&str; 5] = ["ckpt", "pt", "pth", "bin", "pkl"];

/// Whether a file is a pickle (which pixelgen refuses to load).
pub fn is_pickle(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The snapshot folder of `repo` (`owner/name`) in a hub cache, if it is there.
pub fn hub_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshots = root.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(root.join("refs").join("main")) {
        let dir = snapshots.join(commit.trim());
        if dir.is_dir() {
            return Some(dir);
        }
    }
    // No `main` ref (downloaded by revision): the most recently written snapshot.
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// Whether a manifest's `model` string names a Hugging Face repository (`owner/name`).
pub fn is_repo_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        && !model.starts_with('.')
        && !model.ends_with(".safetensors")
}

/// Resolves a manifest's `model` string: a path (relative to `base`) to a folder or a
/// `.safetensors` file, or a Hugging Face repo id looked up in the hub cache `hub_cache`
/// (the caller reads it from the environment: `HF_HUB_CACHE`, `HF_HOME`, ...).
pub fn locate(
    model: &str,
    base: &Path,
    hub_cache: Option<&Path>,
) -> Result<ModelLocation, LocateError> {
    let path = base.join(model);
    if is_pickle(&path) {
        return Err(LocateError::Pickle { path });
    }
    if path.is_dir() {
        return Ok(ModelLocation::Folder(path));
    }
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(ModelLocation::SingleFile(path)),
            _ => Err(LocateError::NotSafetensors { path }),
        };
    }
    let mut searched = vec![path.display().to_string()];
    if is_repo_id(model)
        && let Some(cache) = hub_cache
    {
        if let Some(snapshot) = hub_snapshot(cache, model) {
            return Ok(ModelLocation::Folder(snapshot));
        }
        let repo_dir = cache.join(format!("models--{}", model.replace('/', "--")));
        searched.push(format!("{} (Hugging Face cache)", repo_dir.display()));
    }
    Err(LocateError::NotFound {
        model: model.to_string(),
        searched: searched.join("\n  "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_folders_files_and_hub_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("models/tiny/unet")).unwrap();
        std::fs::write(dir.path().join("models/tiny/unet/config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("models/tiny/unet/w.safetensors"), "x").unwrap();
        std::fs::write(dir.path().join("models/tiny/unet/w.bin"), "x").unwrap();
        std::fs::write(dir.path().join("one.safetensors"), "x").unwrap();
        std::fs::write(dir.path().join("old.ckpt"), "x").unwrap();

        let folder = locate("models/tiny", dir.path(), None).unwrap();
        assert_eq!(
            folder,
            ModelLocation::Folder(dir.path().join("models/tiny"))
        );
        let files: Vec<String> = folder
            .content_files()
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "models/tiny/unet/config.json",
                "models/tiny/unet/w.safetensors"
            ]
        );
        assert_eq!(
            locate("one.safetensors", dir.path(), None).unwrap(),
            ModelLocation::SingleFile(dir.path().join("one.safetensors"))
        );
        let pickle = locate("old.ckpt", dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(pickle.contains("arbitrary code"), "{pickle}");

        let snapshot = dir.path().join("hub/models--owner--model/snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(dir.path().join("hub/models--owner--model/refs")).unwrap();
        std::fs::write(
            dir.path().join("hub/models--owner--model/refs/main"),
            "abc123\n",
        )
        .unwrap();
        assert_eq!(
            hub_snapshot(&dir.path().join("hub"), "owner/model"),
            Some(snapshot.clone())
        );
        let hub = dir.path().join("hub");
        assert_eq!(
            locate("owner/model", dir.path(), Some(&hub)).unwrap(),
            ModelLocation::Folder(snapshot)
        );
        let missing = locate("owner/other", dir.path(), Some(&hub))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("models--owner--other"), "{missing}");
        assert!(locate("owner/model", dir.path(), None).is_err());
        assert!(is_repo_id("stabilityai/sd-turbo"));
        assert!(!is_repo_id("./models/x"));
        assert!(!is_repo_id("models/x.safetensors"));
    }
}
