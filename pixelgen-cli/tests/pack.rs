//! `cargo pixelgen pack DIR -o ATLAS.png --json ATLAS.json [--padding P] [--max-size WxH]`:
//! TexturePacker's JSON hash, read back the way an engine would.

use std::path::Path;
use std::process::Output;

use image::{Rgba, RgbaImage};
use pixelgen_test_support::fs::read_json;
use pixelgen_test_support::{images, process};
use serde_json::Value;

fn pack(dir: &Path, args: &[&str]) -> Output {
    process::cargo_pixelgen(env!("CARGO_BIN_EXE_cargo-pixelgen"))
        .current_dir(dir)
        .arg("pack")
        .args(args)
        .output()
        .unwrap()
}

/// A sprite with distinct pixels per `seed`, inside a transparent margin.
fn sprite(seed: u32, w: u32, h: u32, margin: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        let inside = x >= margin && y >= margin && x + margin < w && y + margin < h;
        if inside {
            Rgba([seed as u8, (x * 9) as u8, (y * 7) as u8, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    })
}

/// 40 sprites in two folders, two of them identical, most with a transparent margin.
fn sprites(dir: &Path) -> Vec<(String, RgbaImage)> {
    let mut out: Vec<(String, RgbaImage)> = Vec::new();
    for i in 0..40u32 {
        let (w, h) = (6 + (i * 7) % 29, 5 + (i * 11) % 31);
        let name = if i % 3 == 0 {
            format!("walk/frame_{i:02}.png")
        } else {
            format!("item_{i:02}.png")
        };
        let image = if i == 39 {
            out[0].1.clone()
        } else {
            sprite(i + 1, w, h, i % 3)
        };
        out.push((name, image));
    }
    std::fs::create_dir_all(dir.join("walk")).unwrap();
    for (name, image) in &out {
        image.save(dir.join(name)).unwrap();
    }
    // Not a PNG: ignored.
    std::fs::write(dir.join("notes.txt"), "not a sprite").unwrap();
    out
}

/// Runs `pack` and asserts it succeeded.
fn pack_ok(dir: &Path, args: &[&str]) {
    let out = pack(dir, args);
    process::assert_success(&out);
}

fn sorted_names(sprites: &[(String, RgbaImage)]) -> Vec<String> {
    let mut names: Vec<String> = sprites.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names
}

fn rect(frame: &Value, key: &str) -> [u32; 4] {
    let f = &frame[key];
    let get = |k: &str| {
        f[k].as_u64()
            .unwrap_or_else(|| panic!("{key}.{k} in {frame}")) as u32
    };
    if key == "sourceSize" {
        [0, 0, get("w"), get("h")]
    } else {
        [get("x"), get("y"), get("w"), get("h")]
    }
}

/// Checks one page: frames inside `meta.size`, distinct rects `padding` apart, and each
/// frame's pixels (placed by `spriteSourceSize` within `sourceSize`) equal to its file.
fn check_page(
    json: &Value,
    png: &RgbaImage,
    sprites: &[(String, RgbaImage)],
    padding: u32,
) -> Vec<String> {
    let size = &json["meta"]["size"];
    assert_eq!(
        (
            size["w"].as_u64().unwrap() as u32,
            size["h"].as_u64().unwrap() as u32
        ),
        png.dimensions()
    );
    let frames = json["frames"].as_object().unwrap();
    let mut rects: Vec<[u32; 4]> = Vec::new();
    for (name, frame) in frames {
        let [x, y, w, h] = rect(frame, "frame");
        assert!(
            x + w <= png.width() && y + h <= png.height(),
            "{name} outside"
        );
        assert_eq!(frame["rotated"], false);
        let [ox, oy, sw, sh] = rect(frame, "spriteSourceSize");
        assert_eq!((sw, sh), (w, h));
        let [_, _, fw, fh] = rect(frame, "sourceSize");
        let source = &sprites.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!((fw, fh), source.dimensions(), "{name}");
        for (sx, sy, px) in source.enumerate_pixels() {
            if sx >= ox && sy >= oy && sx - ox < w && sy - oy < h {
                assert_eq!(
                    png.get_pixel(x + sx - ox, y + sy - oy),
                    px,
                    "{name} ({sx}, {sy})"
                );
            } else {
                assert_eq!(px[3], 0, "{name}: opaque pixel cut off");
            }
        }
        rects.push([x, y, w, h]);
    }
    rects.sort_unstable();
    rects.dedup();
    for (i, a) in rects.iter().enumerate() {
        for b in &rects[i + 1..] {
            let apart = a[0] + a[2] + padding <= b[0]
                || b[0] + b[2] + padding <= a[0]
                || a[1] + a[3] + padding <= b[1]
                || b[1] + b[3] + padding <= a[1];
            assert!(apart, "{a:?} and {b:?} closer than {padding}");
        }
    }
    frames.keys().cloned().collect()
}

#[test]
fn a_folder_becomes_an_atlas_and_texture_packer_json() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sprites");
    let sprites = sprites(&input);
    pack_ok(
        dir.path(),
        &[
            "sprites",
            "-o",
            "atlas.png",
            "--json",
            "atlas.json",
            "--padding",
            "2",
        ],
    );
    let json: Value = read_json(&dir.path().join("atlas.json"));
    let png = images::read_rgba(&dir.path().join("atlas.png"));
    assert_eq!(json["meta"]["image"], "atlas.png");
    let mut names = check_page(&json, &png, &sprites, 2);
    names.sort();
    let expected = sorted_names(&sprites);
    assert_eq!(names, expected, "every PNG, named by its relative path");
    // Untrimmed by default: frames are the whole images; identical images share a rect.
    let frames = &json["frames"];
    assert_eq!(frames["item_01.png"]["trimmed"], false);
    assert_eq!(
        frames["walk/frame_00.png"]["frame"],
        frames["walk/frame_39.png"]["frame"]
    );
    // Tight: the sprites fill most of the atlas.
    let area: u32 = sprites
        .iter()
        .take(39)
        .map(|(_, i)| (i.width() + 2) * (i.height() + 2))
        .sum();
    assert!(f64::from(area) >= 0.85 * f64::from((png.width() + 2) * (png.height() + 2)));
    // The same input gives the same bytes.
    let again = pack(
        dir.path(),
        &[
            "sprites",
            "-o",
            "again.png",
            "--json",
            "again.json",
            "--padding",
            "2",
        ],
    );
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("atlas.png")).unwrap(),
        std::fs::read(dir.path().join("again.png")).unwrap()
    );
}

#[test]
fn trimming_records_where_each_frame_was_cut() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let sprites = sprites(&input);
    pack_ok(
        dir.path(),
        &[
            "in",
            "-o",
            "a.png",
            "--json",
            "a.json",
            "--trim",
            "--extrude",
            "1",
        ],
    );
    let json: Value = read_json(&dir.path().join("a.json"));
    let png = images::read_rgba(&dir.path().join("a.png"));
    // Extrusion 1 + padding 1 keeps distinct frames 3 apart.
    check_page(&json, &png, &sprites, 3);
    let frame = &json["frames"]["item_01.png"];
    assert_eq!(frame["trimmed"], true);
    assert_eq!(rect(frame, "spriteSourceSize")[..2], [1, 1]);
}

#[test]
fn sprites_beyond_max_size_go_onto_more_pages() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let sprites = sprites(&input);
    pack_ok(
        dir.path(),
        &[
            "in",
            "-o",
            "a.png",
            "--json",
            "a.json",
            "--max-size",
            "80x64",
        ],
    );
    let mut seen = Vec::new();
    for page in 0.. {
        let (png, json) = match page {
            0 => ("a.png".to_owned(), "a.json".to_owned()),
            _ => (format!("a-{page}.png"), format!("a-{page}.json")),
        };
        if !dir.path().join(&png).exists() {
            break;
        }
        let json: Value = read_json(&dir.path().join(&json));
        assert_eq!(json["meta"]["image"], png.as_str());
        let png = images::read_rgba(&dir.path().join(&png));
        assert!(png.width() <= 80 && png.height() <= 64);
        seen.extend(check_page(&json, &png, &sprites, 1));
    }
    assert!(dir.path().join("a-1.png").exists(), "more than one page");
    seen.sort();
    let expected = sorted_names(&sprites);
    assert_eq!(seen, expected, "every sprite on exactly one page");
}

#[test]
fn bad_input_gets_plain_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = pack(dir.path(), &["empty", "-o", "a.png", "--json", "a.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no .png files in empty"));

    let out = pack(dir.path(), &["missing", "-o", "a.png", "--json", "a.json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing is not a folder"));

    let out = pack(
        dir.path(),
        &[
            "empty",
            "-o",
            "a.png",
            "--json",
            "a.json",
            "--max-size",
            "big",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));

    std::fs::create_dir(dir.path().join("one")).unwrap();
    sprite(1, 50, 20, 0)
        .save(dir.path().join("one/wide.png"))
        .unwrap();
    let out = pack(
        dir.path(),
        &[
            "one",
            "-o",
            "a.png",
            "--json",
            "a.json",
            "--max-size",
            "40x40",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("wide.png") && stderr.contains("40x40"),
        "{stderr}"
    );
}
