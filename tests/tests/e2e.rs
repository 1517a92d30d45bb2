//! Real `cargo build`s of temporary game crates that use pixelgen-build from build.rs.

use pixelgen_test_support::{fixtures, images};
use pixelgen_tests::GameCrate;

const MANIFEST: &str = r#"(
    defaults: (size: (16, 16), palette: "pico-8"),
    atlases: { "characters": (padding: 1, extrude: 1), "items": () },
    sprites: {
        "hero":   (prompt: "knight with a red cape", seed: 42, atlas: "characters"),
        "walk":   (prompt: "knight walking", seed: 43, atlas: "characters", frames: 3),
        "potion": (prompt: "red potion bottle", seed: 7, atlas: "items", size: (12, 12)),
    },
)"#;

#[test]
fn first_build_generates_all_then_nothing_then_exactly_what_changed() {
    let game = GameCrate::new("e2e_incremental", MANIFEST);
    let first = game.build(&[]);
    assert!(first.success, "{}", first.stderr);
    assert_eq!(first.summary, Some((3, 3, 0)), "{}", first.stderr);
    assert_eq!(game.cache_files().len(), 5, "one PNG per frame: 1 + 3 + 1");
    assert!(game.lock().contains("\"walk\": {"), "{}", game.lock());

    // Nothing changed: nothing is generated, and the line says so (cargo replays a fresh
    // build script's warnings, so a stale "3 generated" here would be a lie).
    let cache_before = game.cache_files();
    for _ in 0..2 {
        let again = game.build(&[]);
        assert!(again.success, "{}", again.stderr);
        assert_eq!(again.summary, Some((3, 0, 3)), "{}", again.stderr);
    }
    assert_eq!(game.cache_files(), cache_before);

    for (what, from, to) in [
        ("prompt", "red potion bottle", "blue potion bottle"),
        ("seed", "seed: 42", "seed: 40"),
        ("size", "frames: 3)", "frames: 3, size: (20, 20))"),
    ] {
        game.write_manifest(&game.manifest().replace(from, to));
        let output = game.build(&[]);
        assert!(output.success, "{what}: {}", output.stderr);
        assert_eq!(
            output.summary,
            Some((3, 1, 2)),
            "changing a {what} regenerates one sprite: {}",
            output.stderr
        );
    }
}

#[test]
fn changing_a_lora_file_regenerates_exactly_the_sprites_that_use_it() {
    let manifest = r#"(
        defaults: (size: (16, 16)),
        sprites: {
            "styled":  (prompt: "green slime", seed: 1, loras: [(path: "art/style.safetensors", weight: 0.8)]),
            "styled2": (prompt: "bat", seed: 2, loras: [(path: "art/style.safetensors", weight: 0.5)]),
            "plain":   (prompt: "gold coin", seed: 3),
        },
    )"#;
    let game = GameCrate::new("e2e_lora", manifest);
    std::fs::create_dir_all(game.path().join("art")).unwrap();
    std::fs::write(game.path().join("art/style.safetensors"), b"weights v1").unwrap();
    let first = game.build(&[]);
    assert_eq!(first.summary, Some((3, 3, 0)), "{}", first.stderr);

    std::fs::write(
        game.path().join("art/style.safetensors"),
        b"weights v2 (retrained)",
    )
    .unwrap();
    let second = game.build(&[]);
    assert!(second.success, "{}", second.stderr);
    assert_eq!(second.summary, Some((3, 2, 1)), "{}", second.stderr);

    // Offline builds do not need the LoRA file: its hash is in sprites.lock.
    std::fs::remove_file(game.path().join("art/style.safetensors")).unwrap();
    game.write_manifest(&format!("{manifest}\n// touched\n"));
    let offline = game.build(&[("PIXELGEN_OFFLINE", "1")]);
    assert!(offline.success, "{}", offline.stderr);
    assert_eq!(offline.summary, Some((3, 0, 3)), "{}", offline.stderr);
}

#[test]
fn reordering_the_manifest_regenerates_nothing_and_keeps_every_index() {
    let game = GameCrate::new("e2e_reorder", MANIFEST);
    let first = game.build(&[]);
    assert!(first.success, "{}", first.stderr);
    let index_before = game.index(&first);
    let atlas_before = std::fs::read(
        index_before["atlases"][0]["pages"][0]["image"]
            .as_str()
            .unwrap(),
    )
    .unwrap();

    let reordered = r#"(
    sprites: {
        "potion": (prompt: "red potion bottle", seed: 7, atlas: "items", size: (12, 12)),
        "walk":   (prompt: "knight walking", seed: 43, atlas: "characters", frames: 3),
        "hero":   (prompt: "knight with a red cape", seed: 42, atlas: "characters"),
    },
    atlases: { "items": (), "characters": (extrude: 1, padding: 1) },
    defaults: (palette: "pico-8", size: (16, 16)),
)"#;
    game.write_manifest(reordered);
    let second = game.build(&[]);
    assert!(second.success, "{}", second.stderr);
    assert_eq!(second.summary, Some((3, 0, 3)), "{}", second.stderr);
    let index_after = game.index(&second);
    assert_eq!(index_after, index_before);
    let atlas_after = std::fs::read(
        index_after["atlases"][0]["pages"][0]["image"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(atlas_after, atlas_before, "byte-identical atlas");
}

#[test]
fn offline_build_with_a_stale_sprite_fails_naming_it() {
    let game = GameCrate::new("e2e_offline", MANIFEST);
    assert!(game.build(&[]).success);
    game.write_manifest(
        &game
            .manifest()
            .replace("red potion bottle", "green potion bottle"),
    );
    for env in [("PIXELGEN_OFFLINE", "1"), ("CI", "true")] {
        let output = game.build(&[env]);
        assert!(!output.success, "{env:?} must fail: {}", output.stderr);
        assert!(
            output.stderr.contains("potion: prompt changed"),
            "{}",
            output.stderr
        );
        assert!(
            !output.stderr.contains("hero:"),
            "only the stale sprite is listed: {}",
            output.stderr
        );
        assert!(
            output.stderr.contains("cargo pixelgen generate"),
            "{}",
            output.stderr
        );
    }
    // Nothing was generated while offline.
    assert_eq!(game.cache_files().len(), 5);
}

#[test]
fn a_corrupted_cache_file_is_detected() {
    let game = GameCrate::new("e2e_corrupt", MANIFEST);
    assert!(game.build(&[]).success);
    let victim = game.cache_files()[0].clone();
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x55;
    std::fs::write(&victim, &bad).unwrap();

    // Offline: reported, not used.
    game.write_manifest(&format!("{MANIFEST}\n// touched\n"));
    let offline = game.build(&[("PIXELGEN_OFFLINE", "1")]);
    assert!(!offline.success, "{}", offline.stderr);
    assert!(
        offline.stderr.contains("cache file corrupt"),
        "{}",
        offline.stderr
    );

    // Online: regenerated, and the file is whole again.
    let online = game.build(&[]);
    assert!(online.success, "{}", online.stderr);
    assert_eq!(online.summary, Some((3, 1, 2)), "{}", online.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), good);
}

#[test]
fn a_malformed_manifest_fails_with_line_and_column() {
    let game = GameCrate::new(
        "e2e_malformed",
        "(\n  sprites: {\n    \"hero\": (prompt: \"knight\", seeed: 4),\n  },\n)\n",
    );
    let output = game.build(&[]);
    assert!(!output.success);
    assert!(
        output.stderr.contains("sprites.ron:3:32"),
        "{}",
        output.stderr
    );
    assert!(output.stderr.contains("seeed"), "{}", output.stderr);
    assert!(output.stderr.contains("help:"), "{}", output.stderr);
    assert!(!output.stderr.contains("panicked"), "{}", output.stderr);
}

/// DESIGN.md's first quick start names only `pixelgen-macros`; the generated code uses
/// `pixelgen`'s types, so the build must say which dependency to add, not fail on paths.
#[test]
fn sprites_without_the_pixelgen_dependency_says_to_add_it() {
    let game = GameCrate::new("e2e_macros_only", MANIFEST);
    game.depend_on("pixelgen-macros");
    game.write_main("pixelgen_macros::sprites!();\nfn main() {}\n");
    let output = game.build(&[]);
    assert!(!output.success, "{}", output.stderr);
    assert!(
        output
            .stderr
            .contains("Add `pixelgen` to [dependencies] (it re-exports this macro"),
        "{}",
        output.stderr
    );
    assert!(
        !output.stderr.contains("could not find `pixelgen`"),
        "one clear error, not one per path: {}",
        output.stderr
    );
}

/// A sprite drawn by Stable Diffusion from a local model folder (the tiny SD1 test model
/// whose outputs are checked against diffusers in pixelgen-build's parity tests) goes
/// through `cargo build`: generated once, then cached, then built offline.
#[test]
fn a_diffusion_sprite_builds_through_cargo_build_from_a_local_model() {
    let model = fixtures::tiny_model("sd1");
    let manifest = format!(
        r#"(
    defaults: (size: (16, 16), palette: "pico-8"),
    sprites: {{
        "knight": (prompt: "pixel art knight with a red shield", seed: 3,
                   generator: Diffusion(model: {model:?}, steps: 2, guidance: 5.0, scheduler: Euler, resolution: (64, 64))),
        "coin":   (prompt: "gold coin", seed: 1),
    }},
)"#,
        model = model.display().to_string()
    );
    let game = GameCrate::new("e2e_diffusion", &manifest);
    let first = game.build(&[]);
    assert!(first.success, "{}", first.stderr);
    assert_eq!(first.summary, Some((2, 2, 0)), "{}", first.stderr);
    let lock = game.lock();
    assert!(
        lock.contains("\"model:"),
        "the model's identity is in the lock: {lock}"
    );

    let again = game.build(&[]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.summary, Some((2, 0, 2)), "{}", again.stderr);

    // The cached knight is a 16×16 sprite in the atlas, not the 64×64 raw image.
    let index = game.index(&again);
    let atlas = &index["atlases"][0];
    let knight = atlas["sprites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "knight")
        .expect("knight in the index");
    let page = &atlas["pages"][knight["page"].as_u64().unwrap() as usize];
    let layout_index = knight["frames"][0].as_u64().unwrap() as usize;
    let (rect, trim) = (&page["rects"][layout_index], &page["trims"][layout_index]);
    assert_eq!(
        (trim[2].as_u64(), trim[3].as_u64()),
        (Some(16), Some(16)),
        "{trim}"
    );
    assert!(
        rect[2].as_u64().unwrap() <= 16 && rect[3].as_u64().unwrap() <= 16,
        "{rect}"
    );

    // A new prompt is stale; offline it fails naming it, online it regenerates only it.
    game.write_manifest(&game.manifest().replace("red shield", "blue shield"));
    let offline = game.build(&[("CI", "true")]);
    assert!(!offline.success);
    assert!(
        offline.stderr.contains("knight: prompt changed"),
        "{}",
        offline.stderr
    );
    // PIXELGEN_TIMINGS=1 makes the build script print its stage table as warnings.
    let online = game.build(&[("PIXELGEN_TIMINGS", "1")]);
    assert!(online.success, "{}", online.stderr);
    assert_eq!(online.summary, Some((2, 1, 1)), "{}", online.stderr);
    let table: Vec<&str> = online
        .stderr
        .lines()
        .skip_while(|l| !l.contains("pixelgen timings"))
        .collect();
    for stage in [
        "manifest",
        "model load",
        "unet steps",
        "vae decode",
        "atlases/index",
        "wall",
    ] {
        assert!(
            table.iter().any(|l| l.contains(stage)),
            "no `{stage}` row: {}",
            online.stderr
        );
    }
}

/// A LoRA declared in the manifest as trained from a folder of the game's art is a build
/// product: the first build trains it (once, for both sprites that use it) into the cache
/// and draws with it; a rebuild trains and draws nothing; a changed reference image makes
/// an offline build fail naming the image, the LoRA and exactly its sprites; online, it
/// retrains that LoRA only and regenerates exactly its sprites; offline builds then use
/// the cache, with neither the model nor training needed.
#[test]
fn a_trained_lora_is_a_cached_build_product_retrained_when_an_image_changes() {
    let model = fixtures::tiny_model("sd1");
    let manifest = format!(
        r#"(
    trained_loras: {{
        "items": (images: "art/items", model: {model:?}, rank: 4, steps: 20,
                  learning_rate: 1e-3, resolution: (64, 64), seed: 3),
        "hearts": (images: "art/hearts", model: {model:?}, rank: 2, steps: 10,
                   resolution: (64, 64)),
    }},
    defaults: (size: (16, 16),
               generator: Diffusion(model: {model:?}, steps: 2, guidance: 5.0, scheduler: Euler, resolution: (64, 64))),
    sprites: {{
        "sword": (prompt: "a sword, pxlgn style", seed: 1, loras: [(trained: "items", weight: 1.0)]),
        "coin":  (prompt: "a coin, pxlgn style", seed: 2, loras: [(trained: "items", weight: 0.5)]),
        "heart": (prompt: "a heart, pxlgn style", seed: 3, loras: [(trained: "hearts", weight: 1.0)]),
        "plain": (prompt: "a shield", seed: 4),
    }},
)"#,
        model = model.display().to_string()
    );
    let game = GameCrate::new("e2e_trained_lora", &manifest);
    let art = fixtures::training().join("art");
    for (folder, files) in [
        (
            "art/items",
            &["sword.png", "coin.png", "potion.png", "potion.txt"][..],
        ),
        ("art/hearts", &["heart.png"][..]),
    ] {
        std::fs::create_dir_all(game.path().join(folder)).unwrap();
        for file in files {
            std::fs::copy(art.join(file), game.path().join(folder).join(file)).unwrap();
        }
    }
    let trained = || -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(game.cache_dir().join("lora"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    };

    let first = game.build(&[]);
    assert!(first.success, "{}", first.stderr);
    assert_eq!(first.summary, Some((4, 4, 0)), "{}", first.stderr);
    let first_loras = trained();
    assert_eq!(
        first_loras.len(),
        2,
        "one file per trained LoRA: {first_loras:?}"
    );
    let lock = game.lock();
    assert!(lock.contains("\"trained_loras\""), "{lock}");
    assert!(lock.contains("\"trained:items\""), "{lock}");
    assert!(lock.contains("\"coin.png\""), "images are recorded: {lock}");
    // The trained file is a kohya-format LoRA with its metadata.
    let header = {
        let bytes = std::fs::read(&first_loras[0]).unwrap();
        let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        String::from_utf8(bytes[8..8 + length].to_vec()).unwrap()
    };
    assert!(header.contains("lora_unet_"), "{header}");
    assert!(header.contains("ss_network_dim"), "{header}");

    let again = game.build(&[]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.summary, Some((4, 0, 4)), "{}", again.stderr);
    assert_eq!(trained(), first_loras, "nothing trained again");

    // One reference image changes (one pixel).
    let coin = game.path().join("art/items/coin.png");
    let mut image = image::open(&coin).unwrap().to_rgba8();
    image.put_pixel(0, 0, image::Rgba([1, 2, 3, 255]));
    image.save(&coin).unwrap();
    let offline = game.build(&[("PIXELGEN_OFFLINE", "1")]);
    assert!(!offline.success, "{}", offline.stderr);
    for expected in [
        "coin: trained LoRA `items` changed (image coin.png changed)",
        "sword: trained LoRA `items` changed (image coin.png changed)",
        "items (images in art/items): image coin.png changed; used by coin, sword",
    ] {
        assert!(
            offline.stderr.contains(expected),
            "{expected}: {}",
            offline.stderr
        );
    }
    for fresh in ["heart:", "plain:", "hearts (images"] {
        assert!(
            !offline.stderr.contains(fresh),
            "{fresh}: {}",
            offline.stderr
        );
    }
    assert_eq!(trained(), first_loras, "offline builds never train");

    let online = game.build(&[]);
    assert!(online.success, "{}", online.stderr);
    assert_eq!(online.summary, Some((4, 2, 2)), "{}", online.stderr);
    let after = trained();
    assert_eq!(
        after.len(),
        3,
        "items retrained beside the old file: {after:?}"
    );
    assert!(
        first_loras.iter().all(|f| after.contains(f)),
        "hearts kept: {after:?}"
    );

    // Offline with everything cached: builds without training or the model's files.
    game.write_manifest(&format!("{}\n// touched\n", game.manifest()));
    let cached = game.build(&[("PIXELGEN_OFFLINE", "1")]);
    assert!(cached.success, "{}", cached.stderr);
    assert_eq!(cached.summary, Some((4, 0, 4)), "{}", cached.stderr);
}

/// Conditioned sprites through a real `cargo build`: a seamless tile from the procedural
/// generator and from Diffusion (`tiling: XY`), a sprite drawn from a sketch (`init`), one
/// repainted under a mask and one following a ControlNet, on the tiny fixture models. The
/// finished tiles wrap (their seam is no larger than a step between neighbouring columns
/// or rows inside them); a rebuild draws nothing; a changed sketch redraws exactly the
/// sprite drawn from it.
#[test]
fn conditioned_sprites_build_and_tiles_wrap() {
    let model = fixtures::tiny_model("sd1").display().to_string();
    let controlnet = fixtures::diffusion()
        .join("conditioned/sd1-controlnet")
        .display()
        .to_string();
    let diffusion = format!(
        "Diffusion(model: {model:?}, steps: 4, guidance: 5.0, scheduler: Euler, resolution: (64, 64))"
    );
    let manifest = format!(
        r#"(
    defaults: (size: (16, 16)),
    sprites: {{
        "floor":  (prompt: "mossy stone floor", seed: 1, tiling: XY),
        "grass":  (prompt: "grass texture", seed: 2, tiling: XY, generator: {diffusion}),
        "sketch": (prompt: "red knight", seed: 3, generator: {diffusion},
                   init: (image: "art/sketch.png", strength: 0.6)),
        "fixed":  (prompt: "red knight", seed: 4, generator: {diffusion},
                   init: (image: "art/base.png", mask: "art/mask.png")),
        "posed":  (prompt: "red knight", seed: 5, generator: {diffusion},
                   controlnet: [(model: {controlnet:?}, image: "art/pose.png", scale: 0.8)]),
    }},
)"#
    );
    let game = GameCrate::new("e2e_conditioned", &manifest);
    let art = game.path().join("art");
    std::fs::create_dir_all(&art).unwrap();
    let sketch = |value: u8| {
        image::RgbImage::from_fn(16, 16, |x, y| {
            if (4..12).contains(&x) && (2..14).contains(&y) {
                image::Rgb([value, 30, 30])
            } else {
                image::Rgb([40, 40, 90])
            }
        })
        .save(art.join("sketch.png"))
        .unwrap()
    };
    sketch(200);
    image::RgbImage::from_pixel(16, 16, image::Rgb([90, 140, 60]))
        .save(art.join("base.png"))
        .unwrap();
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]))
        .save(art.join("mask.png"))
        .unwrap();
    image::RgbImage::from_fn(32, 32, |x, y| {
        let line = x == 16 || y == 8 || x == y;
        image::Rgb(if line { [255; 3] } else { [0; 3] })
    })
    .save(art.join("pose.png"))
    .unwrap();

    let first = game.build(&[]);
    assert!(first.success, "{}", first.stderr);
    assert_eq!(first.summary, Some((5, 5, 0)), "{}", first.stderr);
    let lock = game.lock();
    for file in [
        "image:art/sketch.png",
        "image:art/mask.png",
        "image:art/pose.png",
        "controlnet:",
    ] {
        assert!(lock.contains(file), "{file} in the lock: {lock}");
    }

    // The finished tiles, cut out of their atlas page: untrimmed, and they wrap.
    let index = game.index(&first);
    let atlas = &index["atlases"][0];
    for tile in ["floor", "grass"] {
        let sprite = atlas["sprites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == tile)
            .expect("the tile in the index");
        let page = &atlas["pages"][sprite["page"].as_u64().unwrap() as usize];
        let layout = sprite["frames"][0].as_u64().unwrap() as usize;
        let rect: Vec<u32> = page["rects"][layout]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!((rect[2], rect[3]), (16, 16), "{tile} is not trimmed");
        let page_image = image::open(page["image"].as_str().unwrap())
            .unwrap()
            .to_rgba8();
        let frame = image::imageops::crop_imm(&page_image, rect[0], rect[1], 16, 16).to_image();
        let (seam_x, inside_x, seam_y, inside_y) = images::seam_difference(&frame);
        assert!(
            seam_x <= inside_x && seam_y <= inside_y,
            "{tile}: seams {seam_x:.1} and {seam_y:.1}, largest inside steps {inside_x:.1} and {inside_y:.1}"
        );
    }

    let again = game.build(&[]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.summary, Some((5, 0, 5)), "{}", again.stderr);

    sketch(120);
    let changed = game.build(&[]);
    assert!(changed.success, "{}", changed.stderr);
    assert_eq!(
        changed.summary,
        Some((5, 1, 4)),
        "a new sketch redraws its sprite only: {}",
        changed.stderr
    );
}
