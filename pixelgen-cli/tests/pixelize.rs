//! `cargo pixelgen pixelize IN --size WxH -o OUT [--palette NAME|FILE] [--transparent]`.

use std::path::Path;
use std::process::Output;

use image::{Rgba, RgbaImage};
use pixelgen_test_support::{images, process};

fn pixelize(dir: &Path, args: &[&str]) -> Output {
    process::cargo_pixelgen(env!("CARGO_BIN_EXE_cargo-pixelgen"))
        .current_dir(dir)
        .arg("pixelize")
        .args(args)
        .output()
        .unwrap()
}

/// A 10×8 sprite on a dark background: a block, a stripe and a one-pixel highlight.
fn sprite() -> RgbaImage {
    RgbaImage::from_fn(10, 8, |x, y| match (x, y) {
        (5, 4) => Rgba([255, 241, 232, 255]),
        (2..=7, 2..=5) => Rgba([0, 135, 81, 255]),
        (_, 6) => Rgba([255, 163, 0, 255]),
        _ => Rgba([29, 43, 83, 255]),
    })
}

/// `sprite` drawn with fake pixels of a non-integer size and a little noise.
fn raw() -> RgbaImage {
    let art = sprite();
    let pitch = 6.6;
    let (w, h) = ((10.0 * pitch) as u32, (8.0 * pitch) as u32);
    RgbaImage::from_fn(w, h, |x, y| {
        let cell = art.get_pixel(
            ((x as f64 + 0.5) / pitch) as u32,
            ((y as f64 + 0.5) / pitch).min(7.0) as u32,
        );
        let jitter = ((x * 7 + y * 13) % 5) as i16 - 2;
        let mut p = *cell;
        for c in 0..3 {
            p[c] = (i16::from(p[c]) + jitter).clamp(0, 255) as u8;
        }
        p
    })
}

/// Pixelizes `raw()` to 10×8 with `extra` arguments; the output image.
fn pixelized(dir: &Path, extra: &[&str]) -> RgbaImage {
    let mut args = vec!["raw.png", "--size", "10x8", "-o", "out.png"];
    args.extend(extra);
    let out = pixelize(dir, &args);
    process::assert_success(&out);
    images::read_rgba(&dir.join("out.png"))
}

#[test]
fn pixelize_recovers_the_sprite_with_a_builtin_palette_and_palette_files() {
    let dir = tempfile::tempdir().unwrap();
    raw().save(dir.path().join("raw.png")).unwrap();
    assert_eq!(pixelized(dir.path(), &["--palette", "pico-8"]), sprite());
    std::fs::write(
        dir.path().join("four.hex"),
        "1d2b53\n008751\nffa300\nfff1e8\n",
    )
    .unwrap();
    assert_eq!(pixelized(dir.path(), &["--palette", "four.hex"]), sprite());
    let gpl = "GIMP Palette\nName: four\n29 43 83 navy\n0 135 81\n255 163 0\n255 241 232\n";
    std::fs::write(dir.path().join("four.gpl"), gpl).unwrap();
    assert_eq!(pixelized(dir.path(), &["--palette", "four.gpl"]), sprite());
}

#[test]
fn pixelize_without_a_palette_finds_the_colours_and_transparent_removes_the_background() {
    let dir = tempfile::tempdir().unwrap();
    raw().save(dir.path().join("raw.png")).unwrap();
    let got = pixelized(dir.path(), &["--transparent"]);
    assert_eq!(got.dimensions(), (10, 8));
    assert_eq!(
        got.get_pixel(0, 0),
        &Rgba([0, 0, 0, 0]),
        "background made transparent"
    );
    assert_eq!(
        got.get_pixel(3, 3),
        sprite().get_pixel(3, 3),
        "block colour exact"
    );
    assert_eq!(
        got.get_pixel(5, 4),
        sprite().get_pixel(5, 4),
        "one-pixel highlight kept"
    );
    assert_eq!(
        got.get_pixel(0, 6),
        sprite().get_pixel(0, 6),
        "stripe reaching the edge stays"
    );
}

#[test]
fn pixelize_reports_bad_arguments_plainly() {
    let dir = tempfile::tempdir().unwrap();
    raw().save(dir.path().join("raw.png")).unwrap();
    std::fs::write(dir.path().join("bad.hex"), "12345\n").unwrap();
    let cases: [(&[&str], &[&str]); 4] = [
        (&["raw.png", "--size", "10by8"], &["WIDTHxHEIGHT"]),
        (
            &["raw.png", "--size", "10x8", "--palette", "pico-9"],
            &["unknown palette `pico-9`", "pico-8"],
        ),
        (
            &["missing.png", "--size", "10x8"],
            &["cannot read missing.png"],
        ),
        (
            &["raw.png", "--size", "10x8", "--palette", "bad.hex"],
            &["bad.hex is invalid: line 1"],
        ),
    ];
    for (args, expected) in cases {
        let mut args = args.to_vec();
        args.extend(["-o", "o.png"]);
        let out = pixelize(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        for text in expected {
            assert!(stderr.contains(text), "{args:?}: {stderr}");
        }
    }
    assert!(!dir.path().join("o.png").exists(), "no output on errors");
}
