//! Where the workspace and its committed fixtures are: the tiny random-weight Stable
//! Diffusion models (`pixelgen-diffusion/tests/fixtures/diffusion`), the LoRA training art
//! (`pixelgen-diffusion/tests/fixtures/train`) and the example game.
//!
//! The paths are absolute and free of `..` (they start from this crate's folder), so they
//! can go into a manifest or a command line as they are.

use std::path::{Path, PathBuf};

/// The workspace's root folder (the one with its `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("pixelgen-test-support sits in the workspace")
        .to_path_buf()
}

/// The workspace's `target/` folder (git-ignored): where benches keep what they make once.
pub fn target_dir() -> PathBuf {
    workspace_root().join("target")
}

/// `pixelgen-diffusion/tests/fixtures`: the diffusion models and the training fixtures.
pub fn diffusion_fixtures() -> PathBuf {
    workspace_root().join("pixelgen-diffusion/tests/fixtures")
}

/// `…/fixtures/diffusion`: one folder per model family, and the files the families share
/// (`layouts/`, `tokenizer_cases.json`).
pub fn diffusion() -> PathBuf {
    diffusion_fixtures().join("diffusion")
}

/// The fixtures of one tiny model family (`sd1`, `sd2v`, `sdturbo`, `sdxl`): its `model/`
/// folder, its LoRAs (`lora_kohya.safetensors`, …), cases and diffusers' images.
pub fn family(name: &str) -> PathBuf {
    diffusion().join(name)
}

/// The tiny random-weight model of `family` (`sd1`, …): a diffusers folder.
pub fn tiny_model(family: &str) -> PathBuf {
    self::family(family).join("model")
}

/// `…/fixtures/train`: the LoRA training fixtures (`art/`, the committed trained LoRAs and
/// diffusers' images drawn with them).
pub fn training() -> PathBuf {
    diffusion_fixtures().join("train")
}

/// The example game's crate folder (its `sprites.ron` and committed `sprites.lock`).
pub fn example_game() -> PathBuf {
    workspace_root().join("example-game")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixtures_are_where_the_paths_say() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(tiny_model("sd1").join("model_index.json").is_file());
        assert!(family("sd1").join("lora_kohya.safetensors").is_file());
        assert!(training().join("art").is_dir());
        assert!(example_game().join("sprites.ron").is_file());
        assert!(!diffusion().to_string_lossy().contains(".."));
    }
}
