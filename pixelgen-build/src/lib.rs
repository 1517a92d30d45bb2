//! pixelgen-build: the build-time pixel-art pipeline. Call it from `build.rs`'s `main`:
//!
//! ```no_run
//! pixelgen_build::Build::new().run_or_exit();
//! ```
//!
//! It reads `sprites.ron` beside the crate's Cargo.toml, generates only the sprites whose
//! inputs changed into the workspace's content-addressed `cache/`, packs atlases into
//! OUT_DIR and writes the index that `pixelgen::sprites!()` turns into typed code.
//! The stages, in the order data flows: [`manifest`] → [`Plan`] → [`cache`] →
//! [`generate`] → [`pixelize`] → [`atlas`] → [`emit`]; a [`Session`] drives them.

// The façade: what build scripts (`Build`) and the CLI (a `Session` over a `Project`, and
// the values it hands back) name. The stages the CLI's own commands wrap (`txt2img`,
// `pixelize`, `pack`, `train-lora`, `serve`, `gc`, manifest edits) stay public modules;
// the vocabulary below them is private and re-exported here where the API shows it.
mod atomic;
mod builder;
mod color;
mod diagnostics;
mod environment;
mod error;
mod identity;
mod input_file;
mod key;
mod lock;
mod pipeline;
mod plan;
mod status;
mod timings;

pub mod atlas;
pub mod cache;
pub mod emit;
#[cfg(feature = "cli")]
pub mod gc;
pub mod generate;
/// The index format, shared with the `sprites!` macro (crate `pixelgen-index`).
pub use pixelgen_index as index;
pub mod manifest;
pub mod palette;
pub mod pixelize;
pub mod train;

pub use builder::Build;
pub use diagnostics::Diagnostic;
pub use environment::{DeviceRequest, Environment, HubSettings, ImageServerSettings};
pub use error::Error;
pub use identity::{AtlasName, FrameId, LoraName, SpriteName};
pub use key::FileHasher;
pub use lock::{LockError, LockFile};
pub use pipeline::{Progress, Project, Quiet, Session, Summary, workspace_of, workspace_root_of};
pub use plan::{Plan, PlanError, PlannedFrame, PlannedLora, PlannedSprite};
pub use status::{Freshness, LoraStatus, SpriteStatus, StaleReport};
pub use timings::{Stage, StageTime, Timings};
