//! Unit tests of a sprite's `init`, `controlnet` and `tiling`: the forms DESIGN.md fixes,
//! their defaults, and every refusal placed where the value is written.

use super::*;
use crate::generate::conditioning::{DEFAULT_INPAINT_STRENGTH, DEFAULT_STRENGTH, Tiling};
use pixelgen_test_support::fixtures;

/// A folder with `sprites.ron` beside a 32×32 sketch, a 32×32 mask, a 16×16 picture and
/// a file that is not an image.
fn game() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let art = dir.path().join("art");
    std::fs::create_dir(&art).unwrap();
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 40, 40]))
        .save(art.join("sketch.png"))
        .unwrap();
    image::GrayImage::from_pixel(32, 32, image::Luma([255]))
        .save(art.join("mask.png"))
        .unwrap();
    image::RgbImage::from_pixel(16, 16, image::Rgb([0, 0, 0]))
        .save(art.join("small.png"))
        .unwrap();
    std::fs::write(art.join("notes.png"), "not a picture").unwrap();
    dir
}

fn parse_in(dir: &tempfile::TempDir, text: &str) -> Result<Manifest, (String, (usize, usize))> {
    match parse(&dir.path().join("sprites.ron"), text) {
        Ok(m) => Ok(m),
        Err(ManifestError::Invalid(d)) => Err((d.to_string(), d.line_column())),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

fn sd1() -> String {
    fixtures::diffusion()
        .join("sd1/model")
        .display()
        .to_string()
}

fn sdxl() -> String {
    fixtures::diffusion()
        .join("sdxl/model")
        .display()
        .to_string()
}

fn controlnet(name: &str) -> String {
    fixtures::diffusion()
        .join("conditioned")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn designs_forms_parse_with_their_defaults() {
    let dir = game();
    let text = format!(
        r#"(defaults: (tiling: X, generator: Diffusion(model: "{}", steps: 10)),
        sprites: {{
            "sketch": (prompt: "a", init: (image: "art/sketch.png", strength: 0.6)),
            "fix": (prompt: "b", init: (image: "art/sketch.png", mask: "art/mask.png"), tiling: XY),
            "redo": (prompt: "c", init: (image: "art/sketch.png")),
            "pose": (prompt: "d", controlnet: [(model: "{}", image: "art/small.png", scale: 0.7, start: 0.1, end: 0.9)]),
            "plain": (prompt: "e", generator: Procedural, tiling: Y),
        }})"#,
        sd1(),
        controlnet("sd1-controlnet")
    );
    let m = parse_in(&dir, &text).unwrap();
    let sprite = |name: &str| m.sprites.iter().find(|s| s.name.as_str() == name).unwrap();
    let sketch = sprite("sketch").conditioning.init.as_ref().unwrap();
    assert_eq!(sketch.strength, 0.6);
    assert_eq!(sketch.image.size, (32, 32));
    assert_eq!(sprite("sketch").conditioning.tiling, Some(Tiling::X));
    let fix = &sprite("fix").conditioning;
    assert_eq!(
        fix.init.as_ref().unwrap().strength,
        DEFAULT_INPAINT_STRENGTH
    );
    assert_eq!(fix.tiling, Some(Tiling::XY));
    assert_eq!(
        sprite("redo").conditioning.init.as_ref().unwrap().strength,
        DEFAULT_STRENGTH
    );
    let pose = &sprite("pose").conditioning.controlnets[0];
    assert_eq!((pose.scale, pose.start, pose.end), (0.7, 0.1, 0.9));
    assert_eq!(pose.image.size, (16, 16));
    assert_eq!(sprite("plain").conditioning.tiling, Some(Tiling::Y));
    // The images are inputs of the build (rerun-if-changed).
    assert!(m.input_files.iter().any(|p| p.ends_with("art/mask.png")));
}

#[test]
fn what_cannot_work_is_refused_where_it_is_written() {
    let dir = game();
    let model = sd1();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            r#"init: (image: "art/missing.png")"#.into(),
            "\"art/missing.png\"",
            "does not exist",
        ),
        (
            r#"init: (image: "art/notes.png")"#.into(),
            "\"art/notes.png\"",
            "not an image",
        ),
        (
            r#"init: (image: "art/sketch.png", strength: 1.5)"#.into(),
            "(image",
            "outside (0, 1]",
        ),
        (
            r#"init: (image: "art/sketch.png", strength: 0.05)"#.into(),
            "(image",
            "runs no step",
        ),
        (
            r#"init: (image: "art/small.png")"#.into(),
            "(image",
            "neither the sprite's 32×32",
        ),
        (
            r#"init: (image: "art/sketch.png", mask: "art/small.png")"#.into(),
            "(image",
            "mask of 16×16",
        ),
        (
            format!(
                r#"controlnet: [(model: "{}", image: "art/small.png", start: 0.8, end: 0.2)]"#,
                controlnet("sd1-controlnet")
            ),
            "\"/",
            "start 0.8 and end 0.2",
        ),
        (
            r#"controlnet: [(model: "art", image: "art/small.png")]"#.into(),
            "\"art\"",
            "names ControlNet `art`",
        ),
    ];
    for (field, at, words) in cases {
        let text = format!(
            "(sprites: {{\n \"a\": (prompt: \"b\", generator: Diffusion(model: \"{model}\", steps: 10), {field}) }})"
        );
        let (message, position) = parse_in(&dir, &text).unwrap_err();
        assert!(message.contains(words), "{field}: {message}");
        assert!(
            points_at(&text, position, at),
            "{field}: {position:?}: {message}"
        );
        assert!(message.contains("sprite `a`"), "{message}");
    }
}

/// An SD 1.x ControlNet on an SDXL model is refused at the ControlNet, naming both.
#[test]
fn a_controlnet_for_another_family_is_refused() {
    let dir = game();
    let text = format!(
        "(sprites: {{\n \"a\": (prompt: \"b\", generator: Diffusion(model: \"{}\"), controlnet: [(model: \"{}\", image: \"art/small.png\")]) }})",
        sdxl(),
        controlnet("sd1-controlnet")
    );
    let (message, position) = parse_in(&dir, &text).unwrap_err();
    assert!(
        message.contains("made for SD-1/2-like") && message.contains("SDXL-like"),
        "{message}"
    );
    assert!(points_at(&text, position, "\"/"), "{position:?}: {message}");
    // The SDXL ControlNet fits the SDXL model.
    let fits = text.replace("sd1-controlnet", "sdxl-controlnet");
    parse_in(&dir, &fits).unwrap();
}

/// Procedural sprites draw tiles but follow no image; an InvokeAI server draws all of
/// it; a ComfyUI workflow takes an init image and ControlNets only through named inputs,
/// and no tiling.
#[test]
fn generators_that_cannot_draw_it_are_refused_at_the_field() {
    let dir = game();
    let text = "(sprites: {\n \"a\": (prompt: \"b\", init: (image: \"art/sketch.png\")) })";
    let (message, position) = parse_in(&dir, text).unwrap_err();
    assert!(
        message.contains("Procedural generator, which cannot draw from an init image"),
        "{message}"
    );
    assert!(
        points_at(text, position, "(image"),
        "{position:?}: {message}"
    );
    let invokeai = "(defaults: (tiling: XY),\n sprites: {\n \"a\": (prompt: \"b\", init: (image: \"art/sketch.png\"), generator: Server(url: \"http://127.0.0.1:9\", model: \"m\")) })";
    parse_in(&dir, invokeai).unwrap();
    std::fs::write(
        dir.path().join("workflow.json"),
        r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}"#,
    )
    .unwrap();
    let comfyui = "Server(kind: ComfyUI, url: \"http://127.0.0.1:9\", workflow: \"workflow.json\", inputs: (prompt: \"2.filename_prefix\", seed: \"1.color\", size: \"1\"))";
    let text = format!(
        "(defaults: (tiling: XY),\n sprites: {{\n \"a\": (prompt: \"b\", generator: {comfyui}) }})"
    );
    let (message, position) = parse_in(&dir, &text).unwrap_err();
    assert!(message.contains("draw no seamless tiles"), "{message}");
    // Written in `defaults`: the error points there.
    assert!(points_at(&text, position, "XY"), "{position:?}: {message}");
    let text = format!(
        "(sprites: {{\n \"a\": (prompt: \"b\", init: (image: \"art/sketch.png\"), generator: {comfyui}) }})"
    );
    let (message, position) = parse_in(&dir, &text).unwrap_err();
    assert!(message.contains("name no init image"), "{message}");
    assert!(
        points_at(&text, position, "(image"),
        "{position:?}: {message}"
    );
    // A ControlNet needs its entry in `controlnets`; a scale other than 1 its strength.
    let posed = |inputs: &str, scale: f64| {
        format!(
            "(sprites: {{\n \"a\": (prompt: \"b\", controlnet: [(model: \"{}\", image: \"art/sketch.png\", scale: {scale})], generator: {}) }})",
            controlnet("sd1-controlnet"),
            comfyui.replace("size: \"1\")", &format!("size: \"1\"{inputs})"))
        )
    };
    let text = posed("", 1.0);
    let (message, position) = parse_in(&dir, &text).unwrap_err();
    assert!(
        message.contains("name no nodes for its ControlNet number 1"),
        "{message}"
    );
    assert!(points_at(&text, position, "\"/"), "{position:?}: {message}");
    let named = ", controlnets: [(image: \"1.color\")]";
    parse_in(&dir, &posed(named, 1.0)).unwrap();
    let (message, _) = parse_in(&dir, &posed(named, 0.5)).unwrap_err();
    assert!(
        message.contains("name no strength for ControlNet"),
        "{message}"
    );
    let strength = ", controlnets: [(image: \"1.color\", strength: \"1.batch_size\")]";
    parse_in(&dir, &posed(strength, 0.5)).unwrap();
    // Inputs the workflow does not have are refused when it is read.
    let (message, _) = parse_in(&dir, &posed(", controlnets: [(image: \"7\")]", 1.0)).unwrap_err();
    assert!(
        message.contains("no node `7` for the control image"),
        "{message}"
    );
}
