//! pixelgen-build: the build-time pixel-art pipeline. Call it from `build.rs`'s `main`:
//!
//! ```no_run
//! pixelgen_build::Build::new().run_or_exit();
//! ```
//!
//! It reads `sprites.ron` beside the crate's Cargo.toml, generates only the sprites whose
//! inputs changed into the workspace's content-addressed `cache/`, packs atlases into
//! OUT_DIR and writes the index that `pixelgen::sprites!()` turns into typed code.
//! The stages, in the order data flows: [`manifest`] → [`plan`] → [`cache`] →
//! [`generate`] → [`pixelize`] → [`atlas`] → [`emit`]; [`pipeline`] wires them.

pub mod atlas;
pub mod atomic;
pub mod cache;
pub mod color;
pub mod diagnostics;
pub mod emit;
pub mod environment;
pub use environment::Environment;
pub mod gc;
pub mod generate;
pub mod identity;
pub mod input_file;
pub mod key;
pub use identity::{AtlasName, FrameId, LoraName, SpriteName};
/// The index format, shared with the `sprites!` macro (crate `pixelgen-index`).
pub use pixelgen_index as index;
pub mod lock;
pub mod manifest;
pub mod palette;
pub mod pipeline;
pub mod pixelize;
pub mod plan;
#[cfg(unix)]
pub mod serve;
pub mod timings;
pub mod train;

mod builder;

use std::fmt;
use std::path::PathBuf;

pub use builder::Build;
pub use pipeline::{Project, Session, Summary};

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
    Stale(pipeline::StaleReport),
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
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
