//! Temporary game crates: the smallest crate `cargo pixelgen` works on (a `Cargo.toml`
//! that is its own workspace, and `src/main.rs`), with a `sprites.ron` beside it.
//!
//! The end-to-end tests' crates that `cargo build` runs pixelgen-build in are
//! `pixelgen_tests::GameCrate` (they need the workspace's profiles and build-dependencies).

use std::path::Path;

/// Writes a binary crate named `name` into `dir`: `Cargo.toml` (with an empty
/// `[workspace]`, so no enclosing workspace claims it) and `src/main.rs`.
pub fn write_crate(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n[workspace]\n"
        ),
    )
    .expect("write Cargo.toml");
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").expect("write src/main.rs");
}

/// A new temporary folder holding the crate `name` ([`write_crate`]) with `manifest` as
/// its `sprites.ron`; removed when dropped.
pub fn temp_crate(name: &str, manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    write_crate(dir.path(), name);
    std::fs::write(dir.path().join("sprites.ron"), manifest).expect("write sprites.ron");
    dir
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_temporary_crate_has_its_files() {
        let dir = super::temp_crate("probe-game", "(sprites: {})");
        let cargo_toml = std::fs::read_to_string(dir.path().join("Cargo.toml")).unwrap();
        assert!(
            cargo_toml.contains("name = \"probe-game\"") && cargo_toml.ends_with("[workspace]\n")
        );
        assert!(dir.path().join("src/main.rs").is_file());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sprites.ron")).unwrap(),
            "(sprites: {})"
        );
    }
}
