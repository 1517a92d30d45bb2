//! [`Error`]: everything that can stop a build, from any stage, as the build script and
//! the CLI report it.

use std::fmt;
use std::path::PathBuf;

use crate::identity::AtlasName;
use crate::{atlas, diagnostics, generate, lock, manifest, plan, status};

/// Everything that can stop a build. `Debug` prints the same text as `Display`, so that
/// `.unwrap()` in a build script shows the full message.
#[derive(thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Generate(#[from] generate::GenerateError),
    #[error("{0}")]
    Stale(status::StaleReport),
    /// A trained LoRA that could not be trained, pointed at in the manifest.
    #[error("{0}")]
    Train(Box<diagnostics::Diagnostic>),
    #[error("atlas `{atlas}`: {source}")]
    Atlas {
        atlas: AtlasName,
        source: atlas::AtlasError,
    },
    #[error("sprite cache: {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Environment(String),
    /// `cargo metadata` could not say where the crate's workspace is.
    #[error(
        "cannot find the cargo workspace of {}: {source}\nhelp: set PIXELGEN_CACHE_DIR to the folder that holds the sprite cache",
        crate_dir.display()
    )]
    Workspace {
        crate_dir: PathBuf,
        source: cargo_metadata::Error,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
