#![allow(dead_code)] // Each test file uses its own part of this module.

//! What the tests that run the game share: is there a Vulkan driver, and is a picture the
//! game's pixel art.

use std::path::Path;

use pixelgen_test_support::{headless, images};

/// endesga-32, the example's palette (sprites.ron `defaults.palette`).
const PALETTE: [u32; 32] = [
    0xbe4a2f, 0xd77643, 0xead4aa, 0xe4a672, 0xb86f50, 0x733e39, 0x3e2731, 0xa22633, 0xe43b44,
    0xf77622, 0xfeae34, 0xfee761, 0x63c74d, 0x3e8948, 0x265c42, 0x193c3e, 0x124e89, 0x0099db,
    0x2ce8f5, 0xffffff, 0xc0cbdc, 0x8b9bb4, 0x5a6988, 0x3a4466, 0x262b44, 0x181425, 0xff0044,
    0x68386c, 0xb55088, 0xf6757a, 0xe8b796, 0xc28569,
];

/// Without a Vulkan driver a test that renders cannot run: it skips, unless
/// `PIXELGEN_REQUIRE_SCREENSHOT` is set (CI installs lavapipe and sets it).
pub fn can_render() -> bool {
    if headless::vulkan_driver_installed() {
        return true;
    }
    assert!(
        std::env::var_os("PIXELGEN_REQUIRE_SCREENSHOT").is_none(),
        "no Vulkan driver: install mesa-vulkan-drivers (lavapipe)"
    );
    eprintln!("skipped: no Vulkan driver (apt-get install mesa-vulkan-drivers)");
    false
}

/// The picture is the game's: 800×600, nine in ten pixels palette colours, a scene.
pub fn check_screenshot(path: &Path, log: &str) {
    let image = images::open(path)
        .unwrap_or_else(|e| panic!("{e}\n{log}"))
        .into_rgb8();
    check_picture(&image);
}

pub fn check_picture(image: &image::RgbImage) {
    assert_eq!(image.dimensions(), (800, 600));
    let near_palette = |p: &image::Rgb<u8>| {
        PALETTE.iter().any(|c| {
            let rgb = [(c >> 16) as u8, (c >> 8) as u8, *c as u8];
            (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 2)
        })
    };
    let total = image.pixels().count();
    let in_palette = image.pixels().filter(|p| near_palette(p)).count();
    assert!(
        in_palette * 10 >= total * 9,
        "only {in_palette} of {total} pixels are palette colours"
    );
    let colours = images::colour_count(image);
    assert!(
        colours >= 8,
        "a scene, not a blank frame: {colours} colours"
    );
}
