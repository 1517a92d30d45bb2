//! Unit tests of the manifest: defaults, atlases, names, palettes, sprite settings and
//! where each error points; the generator and LoRA tests are in `generators`.

use super::validate::{Case, rust_identifier};
use super::*;

mod conditioning;
mod generators;

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

/// The value at `line:column` in `text` starts with `expected` (1-based, in characters).
fn points_at(text: &str, (line, column): (usize, usize), expected: &str) -> bool {
    text.lines()
        .nth(line - 1)
        .map(|l| l.chars().skip(column - 1).collect::<String>())
        .is_some_and(|rest| rest.starts_with(expected))
}

#[test]
fn atlas_settings_the_packer_cannot_use_are_refused_where_written() {
    for (atlas, value, words) in [
        (
            "(padding: 4000000000)",
            "4000000000",
            "padding of 4000000000",
        ),
        ("(extrude: 257)", "257", "extrude of 257"),
        ("(max_size: (0, 64))", "(0, 64)", "max_size 0×64"),
        (
            "(max_size: (64, 20000))",
            "(64, 20000)",
            "max_size 64×20000",
        ),
    ] {
        let text = format!(
            "(atlases: {{ \"items\": {atlas} }},\n sprites: {{ \"a\": (prompt: \"b\", atlas: \"items\") }})"
        );
        let (message, at) = parse_err(&text);
        assert!(message.contains(words), "{message}");
        assert!(points_at(&text, at, value), "{at:?}: {message}");
    }
}

#[test]
fn a_sprite_must_fit_its_atlas_page_with_all_its_frames() {
    let text = "(atlases: { \"small\": (max_size: (16, 16), extrude: 1) },\n sprites: { \"big\": (prompt: \"b\", atlas: \"small\", size: (16, 8)) })";
    let (message, at) = parse_err(text);
    assert!(message.contains("18×10 with extrusion"), "{message}");
    assert!(
        message.contains("raise `max_size` of atlas `small`"),
        "{message}"
    );
    assert!(points_at(text, at, "(16, 8)"), "{at:?}: {message}");

    // Four 16×16 frames, 1 px apart, fill a 33×33 page; a fifth does not fit.
    let fits = "(atlases: { \"a\": (max_size: (33, 33), padding: 1, extrude: 0) },\n sprites: { \"walk\": (prompt: \"w\", atlas: \"a\", size: (16, 16), frames: 4) })";
    parse_ok(fits);
    let text = fits.replace("frames: 4", "frames: 5");
    let (message, at) = parse_err(&text);
    assert!(
        message.contains("the 5 frames of sprite `walk`"),
        "{message}"
    );
    assert!(message.contains("room for 4"), "{message}");
    assert!(points_at(&text, at, "5"), "{at:?}: {message}");

    // A power-of-two atlas is limited to the power of two below its max_size.
    let text = "(atlases: { \"p\": (max_size: (31, 64), power_of_two: true) },\n sprites: { \"s\": (prompt: \"w\", atlas: \"p\", size: (20, 20)) })";
    let (message, _) = parse_err(text);
    assert!(message.contains("at most 16×64"), "{message}");
}

/// Whatever the validator accepts, the packer packs: random sprite sizes, frame counts
/// and atlas settings around the limits, frames fully opaque (trimming cannot help).
#[test]
fn every_validated_sprite_packs() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..300 {
        let page = (8 + next(120), 8 + next(120));
        let (padding, extrude) = (next(4), next(3));
        let pow2 = next(2) == 0;
        let size = (1 + next(48), 1 + next(48));
        let frames = 1 + next(12);
        let text = format!(
            "(atlases: {{ \"a\": (max_size: ({}, {}), padding: {padding}, extrude: {extrude}, power_of_two: {pow2}, trim: false) }},\n sprites: {{ \"s\": (prompt: \"p\", atlas: \"a\", size: ({}, {}), frames: {frames}) }})",
            page.0, page.1, size.0, size.1
        );
        let Ok(manifest) = parse(Path::new("sprites.ron"), &text) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let sprite = &manifest.sprites[0];
        let image = image::RgbaImage::from_pixel(
            sprite.width,
            sprite.height,
            image::Rgba([200, 10, 10, 255]),
        );
        let ids: Vec<crate::FrameId> = (0..sprite.frames).map(|f| sprite.name.frame(f)).collect();
        let sources: Vec<crate::atlas::Source<'_>> = ids
            .iter()
            .map(|id| crate::atlas::Source {
                id,
                image: &image,
                tiling: None,
            })
            .collect();
        let options = &manifest.atlases[0].options;
        if let Err(e) = crate::atlas::pack(&sources, options) {
            panic!("validated but not packed: {e}\n{text}");
        }
    }
    assert!(
        accepted > 50 && refused > 50,
        "{accepted} accepted, {refused} refused"
    );
}
