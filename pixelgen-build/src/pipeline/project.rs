//! Where a game crate's manifest, lock file and cache are, found alike by the build
//! script and the CLI.

use super::*;

/// Where one game crate's manifest, lock file and cache are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub manifest_path: PathBuf,
    pub lock_path: PathBuf,
    pub cache_dir: PathBuf,
}

impl Project {
    /// The folder of `sprites.ron`, which relative model and LoRA paths start from.
    pub fn manifest_dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }

    /// Where this crate's atlases are published for a running game to reload them:
    /// `cache/live/<crate folder>-<hash of its path>/`, with the same layout as OUT_DIR's
    /// (`pixelgen/index.json` and the pages). The build and `cargo pixelgen watch` both
    /// write there; git ignores it.
    pub fn live_dir(&self) -> PathBuf {
        let crate_dir = self.manifest_dir();
        let canonical =
            std::fs::canonicalize(crate_dir).unwrap_or_else(|_| crate_dir.to_path_buf());
        let hash = blake3::hash(canonical.to_string_lossy().as_bytes());
        let name: String = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.cache_dir
            .join(crate::cache::LIVE_DIR)
            .join(format!("{name}-{}", &hash.to_hex()[..12]))
    }

    /// The project of the crate in `crate_dir`: `sprites.ron` and `sprites.lock` beside
    /// its Cargo.toml, and the cache in `cache/` at the root of its cargo workspace
    /// (`workspace_root`; `None` asks cargo).
    pub fn for_crate(
        crate_dir: &Path,
        cache_dir: Option<PathBuf>,
        workspace_root: Option<PathBuf>,
    ) -> Result<Project, Error> {
        let manifest_path = crate_dir.join(MANIFEST_FILE);
        let cache_dir = match cache_dir {
            Some(dir) => dir,
            None => match workspace_root {
                Some(root) => root.join(CACHE_DIR),
                None => workspace_root_of(crate_dir)?.join(CACHE_DIR),
            },
        };
        Ok(Project {
            lock_path: manifest_path.with_extension("lock"),
            manifest_path,
            cache_dir,
        })
    }
}

impl Project {
    /// The project of the crate in `crate_dir`, as the build script and `cargo pixelgen`
    /// both find it: the cache folder is `cache_dir` if given, else `PIXELGEN_CACHE_DIR`
    /// (relative to the crate), else `cache/` at the cargo workspace root. With `memo`,
    /// the workspace root is remembered in that folder (a build's OUT_DIR), since
    /// `cargo metadata` costs tens of milliseconds.
    pub fn discover(
        crate_dir: &Path,
        cache_dir: Option<PathBuf>,
        environment: &Environment,
        memo: Option<&Path>,
    ) -> Result<Project, Error> {
        let cache_dir = cache_dir.or_else(|| environment.cache_dir_for(crate_dir));
        let workspace_root = match (&cache_dir, memo) {
            (Some(_), _) => None,
            (None, Some(memo)) => Some(memoised_workspace_root(crate_dir, memo)?),
            (None, None) => Some(workspace_root_of(crate_dir)?),
        };
        Project::for_crate(crate_dir, cache_dir, workspace_root)
    }
}

/// `cargo metadata` costs tens of milliseconds; remember its answer in OUT_DIR.
fn memoised_workspace_root(crate_dir: &Path, state_dir: &Path) -> Result<PathBuf, Error> {
    let memo = state_dir.join("workspace-root");
    if let Ok(text) = std::fs::read_to_string(&memo)
        && let Some((for_crate, root)) = text.split_once('\n')
        && Path::new(for_crate) == crate_dir
        && Path::new(root).join("Cargo.toml").is_file()
    {
        return Ok(PathBuf::from(root));
    }
    let root = workspace_root_of(crate_dir)?;
    let _ = std::fs::create_dir_all(state_dir);
    let _ = crate::cache::write_atomically(
        &memo,
        format!("{}\n{}", crate_dir.display(), root.display()).as_bytes(),
    );
    Ok(root)
}

/// The cargo workspace root of the crate in `crate_dir`, from `cargo metadata`.
pub fn workspace_root_of(crate_dir: &Path) -> Result<PathBuf, Error> {
    Ok(workspace_of(crate_dir)?.workspace_root.into_std_path_buf())
}

/// `cargo metadata` (offline, without dependencies) for the workspace of the crate in
/// `crate_dir`.
pub fn workspace_of(crate_dir: &Path) -> Result<cargo_metadata::Metadata, Error> {
    cargo_metadata::MetadataCommand::new()
        .manifest_path(crate_dir.join("Cargo.toml"))
        .no_deps()
        .other_options(vec!["--offline".to_string()])
        .exec()
        .map_err(|source| Error::Workspace {
            crate_dir: crate_dir.to_path_buf(),
            source,
        })
}
