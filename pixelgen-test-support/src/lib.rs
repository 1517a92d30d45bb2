//! What the workspace's tests and benches share, so that each helper is written once:
//! where the committed fixtures are ([`fixtures`]), temporary game crates ([`game`]),
//! files and folders ([`fs`]), images ([`images`]), child processes ([`process`]),
//! loopback ports ([`net`]), running the game without a display ([`headless`]) and the
//! benches' measuring ([`bench`]).
//!
//! It depends on no pixelgen crate, so that every crate of the workspace (pixelgen-build
//! and pixelgen-diffusion included) can take it as a dev-dependency. Its helpers panic
//! with a message naming what failed: they are for tests.

pub mod bench;
pub mod fixtures;
pub mod fs;
pub mod game;
pub mod headless;
pub mod images;
pub mod net;
pub mod process;
