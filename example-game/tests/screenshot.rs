//! Runs the game for real (`--screenshot`): offscreen rendering through wgpu, on Mesa's
//! software Vulkan (lavapipe) where there is no GPU. Checks that the picture is the
//! game's pixel art: the right size, and made of the manifest's palette colours.

use std::process::Command;

use pixelgen_test_support::headless;

mod common;

#[test]
fn screenshot_shows_the_games_pixel_art() {
    if !common::can_render() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shot.png");
    let output = headless::without_display(&mut Command::new(env!("CARGO_BIN_EXE_example-game")))
        .arg("--screenshot")
        .arg(&out)
        .arg("--no-remote")
        .output()
        .expect("run example-game");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    common::check_screenshot(&out, &log);
}

#[test]
fn without_a_display_the_game_says_how_to_run_it() {
    let output = headless::without_display(&mut Command::new(env!("CARGO_BIN_EXE_example-game")))
        .output()
        .expect("run example-game");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no display found"), "{stderr}");
    assert!(stderr.contains("--screenshot"), "{stderr}");
}
