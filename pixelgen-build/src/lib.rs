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
mod error;
pub use error::Error;
pub mod environment;
pub use environment::Environment;
#[cfg(feature = "cli")]
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
pub mod status;
pub mod timings;
pub mod train;

mod builder;

pub use builder::Build;
pub use pipeline::{Project, Session, Summary};
