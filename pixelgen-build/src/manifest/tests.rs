use super::validate::{Case, rust_identifier};
use super::*;

fn parse_ok(text: &str) -> Manifest {
    match parse(Path::new("game/sprites.ron"), text) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

fn parse_err(text: &str) -> (String, (usize, usize)) {
    match parse(Path::new("game/sprites.ron"), text) {
        Ok(_) => panic!("expected an error"),
        Err(ManifestError::Invalid(d)) => (d.to_string(), d.line_column()),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

const GOOD: &str = r#"(
defaults: (
    size: (32, 32),
    palette: "endesga-32",
    background: Transparent,
),
atlases: { "characters": (padding: 2, extrude: 1), "items": (trim: false, max_size: (256, 128)) },
sprites: {
    "potion":    (prompt: "red potion bottle", seed: 7, atlas: "items", size: (16, 16)),
    "hero":      (prompt: "knight with a red cape", seed: 42, atlas: "characters"),
    "hero-walk": (prompt: "knight walking", seed: 43, atlas: "characters", frames: 4, palette: "pico-8"),
},
)"#;

#[test]
fn applies_defaults_and_overrides() {
    let m = parse_ok(GOOD);
    let names: Vec<&str> = m.sprites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["hero", "hero-walk", "potion"]);
    let walk = &m.sprites[1];
    assert_eq!(walk.constant, "HERO_WALK");
    assert_eq!((walk.width, walk.height, walk.frames), (32, 32, 4));
    assert_eq!(walk.palette.as_ref().map(|p| p.colors().len()), Some(16));
    assert_eq!(
        m.sprites[0].palette.as_ref().map(|p| p.colors().len()),
        Some(32)
    );
    assert_eq!((m.sprites[2].width, m.sprites[2].height), (16, 16));
    assert_eq!(m.sprites[2].generator, GeneratorSpec::Procedural);
    assert_eq!(m.atlases.len(), 2);
    assert_eq!(m.atlases[0].options.padding, 2);
    assert!(m.atlases[0].options.trim, "trimmed by default");
    let items = m.atlases[1].options;
    assert!(!items.trim);
    assert_eq!((items.max_width, items.max_height), (256, 128));
}

#[test]
fn implicit_atlas_when_none_declared() {
    let m = parse_ok(r#"(sprites: { "coin": (prompt: "gold coin") })"#);
    assert_eq!(m.atlases.len(), 1);
    assert_eq!(m.atlases[0].name, DEFAULT_ATLAS);
    assert_eq!(m.sprites[0].atlas, DEFAULT_ATLAS);
}

#[test]
fn diffusion_generator_parses_with_parameters() {
    let m = parse_ok(
        r#"(defaults: (generator: Diffusion(model: "stabilityai/sd-turbo", steps: 4, guidance: 0.0), loras: [(path: "art/px.safetensors", weight: 0.8)]),
        sprites: { "a": (prompt: "x") })"#,
    );
    match &m.sprites[0].generator {
        GeneratorSpec::Diffusion {
            model,
            steps,
            scheduler,
            ..
        } => {
            assert_eq!(model, "stabilityai/sd-turbo");
            assert_eq!(*steps, 4);
            assert_eq!(*scheduler, Scheduler::EulerAncestral);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        m.sprites[0].loras[0].resolved,
        Path::new("game/art/px.safetensors")
    );
    assert_eq!(m.sprites[0].loras[0].weight, 0.8);
}

#[test]
fn unknown_field_points_at_it() {
    let (text, (line, column)) =
        parse_err("(\n  sprites: {\n    \"hero\": (prompt: \"x\", sede: 4),\n  },\n)");
    assert_eq!((line, column), (3, 27), "{text}");
    assert!(text.contains("sede"), "{text}");
    assert!(text.contains("game/sprites.ron:3:27"), "{text}");
    assert!(text.contains("help:") && text.contains("seed"), "{text}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let (text, (line, _)) =
        parse_err("(\n  sprites: {\n    \"hero\": (prompt: \"x\" seed: 4),\n  },\n)");
    assert_eq!(line, 3, "{text}");
}

#[test]
fn bad_value_type_is_located() {
    let (text, (line, _)) =
        parse_err("(\n  sprites: {\n    \"hero\": (prompt: \"x\", seed: \"four\"),\n  },\n)");
    assert_eq!(line, 3, "{text}");
}

#[test]
fn duplicate_names_point_at_the_second() {
    let (text, (line, column)) = parse_err(
        "(\n  sprites: {\n    \"bat\": (prompt: \"a\"),\n    \"bat\": (prompt: \"b\"),\n  },\n)",
    );
    assert_eq!((line, column), (4, 5), "{text}");
    assert!(text.contains("duplicate sprite name `bat`"), "{text}");
}

#[test]
fn invalid_identifiers_and_collisions() {
    let (text, (line, _)) = parse_err("(sprites: {\n \"9lives\": (prompt: \"cat\"),\n})");
    assert_eq!(line, 2);
    assert!(text.contains("cannot become a Rust identifier"), "{text}");
    let (text, _) = parse_err("(sprites: {\n \"my sprite\": (prompt: \"cat\"),\n})");
    assert!(text.contains("cannot become a Rust identifier"), "{text}");
    let (text, (line, _)) = parse_err(
        "(sprites: {\n \"hero_walk\": (prompt: \"a\"),\n \"hero-walk\": (prompt: \"b\"),\n})",
    );
    assert_eq!(line, 3);
    assert!(text.contains("HERO_WALK"), "{text}");
    let (text, _) = parse_err(
        "(atlases: { \"type\": () }, sprites: { \"a\": (prompt: \"b\", atlas: \"type\") })",
    );
    assert!(text.contains("atlas name `type`"), "{text}");
}

#[test]
fn undeclared_atlas_lists_the_declared_ones() {
    let (text, (line, _)) = parse_err(
        "(atlases: { \"items\": () },\n sprites: {\n \"a\": (prompt: \"b\", atlas: \"itemz\"),\n})",
    );
    assert_eq!(line, 3);
    assert!(text.contains("declared atlases: items"), "{text}");
}

#[test]
fn unknown_palette_and_missing_palette_file() {
    let (text, (line, _)) =
        parse_err("(defaults: (palette: \"pico-9\"),\n sprites: { \"a\": (prompt: \"b\") })");
    assert_eq!(line, 1);
    assert!(
        text.contains("unknown palette `pico-9`") && text.contains("endesga-32"),
        "{text}"
    );
    let (text, (line, _)) =
        parse_err("(sprites: {\n \"a\": (prompt: \"b\", palette: \"art/none.hex\") })");
    assert_eq!(line, 2);
    assert!(text.contains("cannot read palette file"), "{text}");
}

#[test]
fn out_of_range_values() {
    let (text, (line, _)) = parse_err("(sprites: {\n \"a\": (prompt: \"b\", size: (0, 16)) })");
    assert_eq!(line, 2);
    assert!(text.contains("size 0×16"), "{text}");
    let (text, _) = parse_err("(sprites: {\n \"a\": (prompt: \"b\", frames: 0) })");
    assert!(text.contains("0 frames"), "{text}");
    let (text, _) =
        parse_err("(sprites: {\n \"a\": (prompt: \"b\", background: Color(\"#12345\")) })");
    assert!(text.contains("not a colour"), "{text}");
    let (text, _) = parse_err("(sprites: {\n \"a\": (prompt: \"  \") })");
    assert!(text.contains("empty prompt"), "{text}");
}

#[test]
fn an_error_in_a_default_points_into_defaults_and_names_the_sprite() {
    // The bad value is written once, in `defaults`; the sprites after it set other
    // fields of the same name, which must not be blamed.
    let text = "(\n defaults: (max_colors: 0, size: (0, 8)),\n sprites: {\n  \"a\": (prompt: \"b\", max_colors: 4, size: (8, 8)),\n  \"c\": (prompt: \"d\") },\n)";
    let (message, (line, column)) = parse_err(text);
    assert!(message.contains("sprite `c`"), "{message}");
    assert!(message.contains("size 0×8"), "{message}");
    assert_eq!((line, column), (2, 34), "{message}");
    let text = text.replace("size: (0, 8)", "size: (8, 8)");
    let (message, (line, column)) = parse_err(&text);
    assert!(message.contains("sprite `c`: `max_colors`"), "{message}");
    assert_eq!((line, column), (2, 25), "{message}");
}

#[test]
fn pixelize_options_are_read_with_defaults_and_checked() {
    let m = parse(
        Path::new("sprites.ron"),
        "(defaults: (max_colors: 8, outline: \"#1a1c2c\"),\n sprites: { \"a\": (prompt: \"b\"), \"c\": (prompt: \"d\", max_colors: 3) })",
    )
    .unwrap();
    assert_eq!(m.sprites[0].max_colors, Some(8));
    assert_eq!(m.sprites[0].outline, Some([0x1a, 0x1c, 0x2c]));
    assert_eq!(m.sprites[1].max_colors, Some(3));

    let (text, (line, column)) =
        parse_err("(sprites: {\n \"a\": (prompt: \"b\", max_colors: 0) })");
    assert!(text.contains("`max_colors` must be at least 1"), "{text}");
    assert_eq!((line, column), (2, 33));
    let (text, (line, _)) = parse_err("(sprites: {\n \"a\": (prompt: \"b\", outline: \"#12\") })");
    assert!(text.contains("outline `#12` is not a colour"), "{text}");
    assert_eq!(line, 2);
}

#[test]
fn unknown_generator_variant_lists_the_known_ones() {
    let (text, _) = parse_err("(sprites: {\n \"a\": (prompt: \"b\", generator: Dalle) })");
    assert!(
        text.contains("Procedural") && text.contains("Diffusion"),
        "{text}"
    );
}

#[test]
fn identifier_conversion() {
    assert_eq!(
        rust_identifier("hero-walk", Case::Upper).as_deref(),
        Some("HERO_WALK")
    );
    assert_eq!(
        rust_identifier("Items", Case::Lower).as_deref(),
        Some("items")
    );
    assert_eq!(rust_identifier("_x", Case::Upper), None);
    assert_eq!(rust_identifier("", Case::Upper), None);
    assert_eq!(rust_identifier("mod", Case::Lower), None);
    assert_eq!(rust_identifier("über", Case::Lower), None);
}
