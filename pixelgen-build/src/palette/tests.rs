//! Unit tests of palettes: the built-in tables, the parsers and their errors, nearest
//! colours and image remapping.

use super::builtin::{DB16, DB32, ENDESGA_32, PICO_8, SWEETIE_16};
use super::*;
use image::{Rgba, RgbaImage};

fn hex(s: &str) -> Rgb {
    let v = u32::from_str_radix(s.trim_start_matches('#'), 16).expect("test hex");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

fn builtin(name: &str) -> Palette {
    Palette::builtin(name).expect("built-in palette")
}

fn syntax_at(err: PaletteParseError) -> (usize, usize, String) {
    match err {
        PaletteParseError::Syntax {
            line,
            column,
            message,
        } => (line, column, message),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn builtin_counts_and_no_duplicates() {
    let expected = [
        ("db16", 16),
        ("db32", 32),
        ("endesga-32", 32),
        ("pico-8", 16),
        ("sweetie-16", 16),
    ];
    for (name, count) in expected {
        let p = builtin(name);
        assert_eq!(p.name(), name);
        assert_eq!(p.colors().len(), count, "{name}");
        let unique: HashSet<Rgb> = p.colors().iter().copied().collect();
        assert_eq!(unique.len(), count, "{name} has duplicates");
    }
    // Dedup in from_colors must not have hidden duplicates in the consts.
    for raw in [&PICO_8[..], &DB16, &DB32, &ENDESGA_32, &SWEETIE_16] {
        let unique: HashSet<Rgb> = raw.iter().copied().collect();
        assert_eq!(unique.len(), raw.len());
    }
}

#[test]
fn builtin_names_sorted_and_resolvable() {
    let mut sorted = Palette::BUILTIN_NAMES.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, Palette::BUILTIN_NAMES);
    for name in Palette::BUILTIN_NAMES {
        assert_eq!(builtin(name).name(), *name);
    }
}

#[test]
fn builtin_known_colours() {
    let cases = [
        ("pico-8", ["#FF004D", "#29ADFF", "#000000", "#FFF1E8"]),
        ("db16", ["#140C1C", "#DEEED6", "#D04648", "#597DCE"]),
        ("db32", ["#222034", "#FFFFFF", "#AC3232", "#8A6F30"]),
        ("endesga-32", ["#BE4A2F", "#FF0044", "#0099DB", "#C28569"]),
        ("sweetie-16", ["#1A1C2C", "#F4F4F4", "#41A6F6", "#333C57"]),
    ];
    for (name, colours) in cases {
        let p = builtin(name);
        for c in colours {
            assert!(p.colors().contains(&hex(c)), "{name} lacks {c}");
        }
    }
    // Published order: first and last entries.
    assert_eq!(builtin("pico-8").colors()[15], hex("FFCCAA"));
    assert_eq!(builtin("sweetie-16").colors()[0], hex("1A1C2C"));
    assert_eq!(builtin("endesga-32").colors()[0], hex("BE4A2F"));
}

#[test]
fn builtin_aliases() {
    for (alias, canonical) in [
        ("pico-8", "pico-8"),
        ("pico8", "pico-8"),
        ("PICO-8", "pico-8"),
        ("endesga-32", "endesga-32"),
        ("Endesga32", "endesga-32"),
        ("sweetie-16", "sweetie-16"),
        ("SWEETIE16", "sweetie-16"),
        ("db16", "db16"),
        ("DB32", "db32"),
    ] {
        assert_eq!(builtin(alias).name(), canonical, "{alias}");
    }
    assert_eq!(Palette::builtin("nes"), None);
    assert_eq!(Palette::builtin(""), None);
}

#[test]
fn hex_parses_hash_blank_lines_crlf_and_case() {
    let src = "ff004d\r\n#29ADFF\r\n\r\n   \n\t#1d2B53  \r\n000000";
    let p = Palette::from_hex("mine", src).expect("valid");
    assert_eq!(p.name(), "mine");
    assert_eq!(
        p.colors(),
        [hex("FF004D"), hex("29ADFF"), hex("1D2B53"), hex("000000")]
    );
    // A BOM and a final CR without LF are tolerated too.
    let p = Palette::from_hex("bom", "\u{feff}FFFFFF\r").expect("valid");
    assert_eq!(p.colors(), [[255, 255, 255]]);
}

#[test]
fn hex_bad_digit_reports_line_and_column() {
    let (line, column, msg) = syntax_at(Palette::from_hex("x", "000000\n\n12345G\n").unwrap_err());
    assert_eq!((line, column), (3, 6));
    assert!(msg.contains("'G'") && msg.contains("hex digit"), "{msg}");

    // With '#' and indentation, the column still points at the bad char.
    let (line, column, _) = syntax_at(Palette::from_hex("x", "  #12345G").unwrap_err());
    assert_eq!((line, column), (1, 9));

    // Multi-byte characters count as one column.
    let (_, column, _) = syntax_at(Palette::from_hex("x", "FFé04D").unwrap_err());
    assert_eq!(column, 3);
}

#[test]
fn hex_wrong_length_reports_line_and_column() {
    let (line, column, msg) = syntax_at(Palette::from_hex("x", "000000\r\nFF004\r\n").unwrap_err());
    assert_eq!((line, column), (2, 1));
    assert!(
        msg.contains("found 5") && msg.contains("exactly 6"),
        "{msg}"
    );

    let (line, column, msg) = syntax_at(Palette::from_hex("x", "#1234567").unwrap_err());
    assert_eq!((line, column), (1, 2));
    assert!(msg.contains("found 7"), "{msg}");

    // 8 digits is likely a colour with alpha: say so.
    let (line, column, msg) = syntax_at(Palette::from_hex("x", "\n\nFFFF004D").unwrap_err());
    assert_eq!((line, column), (3, 1));
    assert!(msg.contains("alpha") && msg.contains("RRGGBB"), "{msg}");

    let (_, column, msg) = syntax_at(Palette::from_hex("x", "#").unwrap_err());
    assert_eq!(column, 2);
    assert!(msg.contains("found 0"), "{msg}");
}

#[test]
fn hex_error_display() {
    let err = Palette::from_hex("x", "12345G").unwrap_err();
    assert!(err.to_string().starts_with("line 1, column 6: "), "{err}");
}

const REAL_GPL: &str = "GIMP Palette\r\n\
    Name: PICO-8 subset\r\n\
    Columns: 4\r\n\
    #\r\n\
    # Exported by hand\r\n\
    \r\n  0   0   0\tBlack\r\n\
    255   0  77\tRed 8\r\n\
    \x20 41 173 255\tBlue (sky)\r\n\
    255 241 232\r\n\
    255   0  77\tRed again\r\n";

#[test]
fn gpl_parses_real_file() {
    let p = Palette::from_gpl("sub", REAL_GPL).expect("valid");
    assert_eq!(p.name(), "sub");
    // The repeated red is dropped, keeping the first occurrence.
    assert_eq!(
        p.colors(),
        [hex("000000"), hex("FF004D"), hex("29ADFF"), hex("FFF1E8")]
    );
}

#[test]
fn gpl_missing_header() {
    let (line, column, msg) = syntax_at(Palette::from_gpl("x", "Name: foo\n0 0 0\n").unwrap_err());
    assert_eq!((line, column), (1, 1));
    assert!(msg.contains("GIMP Palette"), "{msg}");
    let (line, _, msg) = syntax_at(Palette::from_gpl("x", "").unwrap_err());
    assert_eq!(line, 1);
    assert!(msg.contains("GIMP Palette"), "{msg}");
}

#[test]
fn gpl_value_out_of_range() {
    let src = "GIMP Palette\nName: x\n0 0 0 Black\n12 256 0 Bad\n";
    let (line, column, msg) = syntax_at(Palette::from_gpl("x", src).unwrap_err());
    assert_eq!((line, column), (4, 4));
    assert!(msg.contains("green") && msg.contains("0-255"), "{msg}");

    let src = "GIMP Palette\n99999999999999999999 0 0\n";
    let (line, column, msg) = syntax_at(Palette::from_gpl("x", src).unwrap_err());
    assert_eq!((line, column), (2, 1));
    assert!(msg.contains("out of range"), "{msg}");
}

#[test]
fn gpl_missing_component() {
    let src = "GIMP Palette\n# c\n\n255 0\n";
    let (line, column, msg) = syntax_at(Palette::from_gpl("x", src).unwrap_err());
    assert_eq!((line, column), (4, 6));
    assert!(msg.contains("missing blue"), "{msg}");
}

#[test]
fn gpl_non_numeric_component() {
    let src = "GIMP Palette\n10 -3 0\n";
    let (line, column, msg) = syntax_at(Palette::from_gpl("x", src).unwrap_err());
    assert_eq!((line, column), (2, 4));
    assert!(msg.contains("green") && msg.contains("\"-3\""), "{msg}");
}

#[test]
fn empty_palettes() {
    assert_eq!(Palette::from_hex("x", ""), Err(PaletteParseError::Empty));
    assert_eq!(
        Palette::from_hex("x", "\r\n  \n"),
        Err(PaletteParseError::Empty)
    );
    assert_eq!(
        Palette::from_gpl("x", "GIMP Palette\nName: x\nColumns: 0\n# none\n"),
        Err(PaletteParseError::Empty)
    );
    assert_eq!(
        Palette::from_colors("x", Vec::new()),
        Err(PaletteParseError::Empty)
    );
}

#[test]
fn from_colors_dedups_keeping_first() {
    let p = Palette::from_colors("d", vec![[1, 2, 3], [4, 5, 6], [1, 2, 3], [7, 8, 9]])
        .expect("non-empty");
    assert_eq!(p.colors(), [[1, 2, 3], [4, 5, 6], [7, 8, 9]]);
    assert_eq!(p.to_bytes(), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn parsers_do_not_panic_on_junk() {
    let junk = [
        "",
        "#",
        "##",
        "\u{feff}",
        "é",
        "GIMP Palette\né",
        "GIMP Palette\n1 2 é",
        "GIMP Palette\nName:",
        "GIMP Palette\nNamé",
        "\r",
        "\n\n\n#\r\n",
        "GIMP",
        "GIMP Palette\n\u{3000}1\u{3000}2\u{3000}3",
    ];
    for src in junk {
        let _ = Palette::from_hex("j", src);
        let _ = Palette::from_gpl("j", src);
    }
    // Unicode whitespace separates GPL fields like ASCII whitespace.
    let p = Palette::from_gpl("j", "GIMP Palette\n\u{3000}1\u{3000}2\u{3000}3").expect("ok");
    assert_eq!(p.colors(), [[1, 2, 3]]);
}

#[test]
fn nearest_is_identity_on_members() {
    for name in Palette::BUILTIN_NAMES {
        let p = builtin(name);
        for &c in p.colors() {
            assert_eq!(p.nearest(c), c, "{name}");
        }
    }
}

#[test]
fn nearest_picks_obvious_colour() {
    let pico = builtin("pico-8");
    assert_eq!(pico.nearest([250, 5, 80]), hex("FF004D"));
    assert_eq!(pico.nearest([40, 170, 250]), hex("29ADFF"));
    assert_eq!(pico.nearest([3, 2, 4]), hex("000000"));
    assert_eq!(pico.nearest([250, 235, 45]), hex("FFEC27"));
    let db32 = builtin("db32");
    assert_eq!(db32.nearest([250, 250, 250]), hex("FFFFFF"));
    let sweetie = builtin("sweetie-16");
    assert_eq!(sweetie.nearest([28, 28, 46]), hex("1A1C2C"));
}

#[test]
fn nearest_ties_go_to_lowest_index() {
    // Equal distances are hard to hit with real colours, so feed the
    // matcher identical OKLab values for two different members.
    let colors = [[1, 1, 1], [2, 2, 2], [3, 3, 3]];
    let labs = [[0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.9, 0.0, 0.0]];
    assert_eq!(nearest_in(&colors, &labs, [9, 9, 9]), [1, 1, 1]);
    let labs = [[0.9, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.0, 0.0]];
    assert_eq!(nearest_in(&colors, &labs, [9, 9, 9]), [2, 2, 2]);
}

#[test]
fn apply_keeps_alpha_and_skips_transparent() {
    let p = builtin("pico-8");
    let mut img = RgbaImage::new(3, 1);
    img.put_pixel(0, 0, Rgba([250, 5, 80, 128]));
    img.put_pixel(1, 0, Rgba([123, 45, 67, 0]));
    img.put_pixel(2, 0, Rgba([40, 170, 250, 255]));
    p.apply(&mut img);
    assert_eq!(img.get_pixel(0, 0), &Rgba([0xff, 0x00, 0x4d, 128]));
    assert_eq!(img.get_pixel(1, 0), &Rgba([123, 45, 67, 0]));
    assert_eq!(img.get_pixel(2, 0), &Rgba([0x29, 0xad, 0xff, 255]));
}

#[test]
fn apply_is_exact_on_palette_images() {
    for name in Palette::BUILTIN_NAMES {
        let p = builtin(name);
        let n = p.colors().len() as u32;
        let mut img = RgbaImage::from_fn(n, 2, |x, y| {
            let [r, g, b] = p.colors()[x as usize];
            Rgba([r, g, b, if y == 0 { 255 } else { 77 }])
        });
        let before = img.clone();
        p.apply(&mut img);
        assert_eq!(img, before, "{name}");
    }
}

#[test]
fn to_bytes_is_colours_in_order() {
    let p = builtin("pico-8");
    let bytes = p.to_bytes();
    assert_eq!(bytes.len(), 48);
    assert_eq!(&bytes[24..27], &[0xff, 0x00, 0x4d]);
    // Same colours, different name → same fingerprint input.
    let q = Palette::from_colors("other", p.colors().to_vec()).expect("ok");
    assert_eq!(q.to_bytes(), bytes);
}
