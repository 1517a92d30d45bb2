//! Palettes: the fixed colour sets that sprites are quantised onto.
//!
//! Provides the built-in palettes, parsers for Lospec `.hex` and GIMP `.gpl`
//! files, nearest-colour matching in OKLab, and whole-image remapping.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::color::Lab;

/// The colour types and OKLab conversions palettes are matched in (module [`crate::color`]).
pub use crate::color::{Rgb, oklab_to_srgb, srgb_to_oklab};

/// An ordered, de-duplicated, non-empty list of colours that sprites are
/// mapped onto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Palette {
    name: String,
    colors: Vec<Rgb>,
}

/// Why a palette file or colour list could not be turned into a [`Palette`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PaletteParseError {
    /// A malformed line, with a 1-based line number and column, and a message
    /// that says what is wrong and what is expected.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// 1-based column, counted in characters.
        column: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The source was well formed but listed no colours.
    #[error("the palette has no colours")]
    Empty,
}

/// Why [`Palette::load`] found no palette.
#[derive(Debug, thiserror::Error)]
pub enum PaletteLoadError {
    #[error("cannot read palette file: {source}")]
    Unreadable {
        path: PathBuf,
        source: crate::input_file::InputFileError,
    },
    #[error("palette file {} is invalid: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: PaletteParseError,
    },
    #[error("unknown palette `{name}`")]
    Unknown { name: String },
}

// PICO-8, by Lexaloffle Games (https://lospec.com/palette-list/pico-8).
const PICO_8: [Rgb; 16] = [
    [0x00, 0x00, 0x00],
    [0x1d, 0x2b, 0x53],
    [0x7e, 0x25, 0x53],
    [0x00, 0x87, 0x51],
    [0xab, 0x52, 0x36],
    [0x5f, 0x57, 0x4f],
    [0xc2, 0xc3, 0xc7],
    [0xff, 0xf1, 0xe8],
    [0xff, 0x00, 0x4d],
    [0xff, 0xa3, 0x00],
    [0xff, 0xec, 0x27],
    [0x00, 0xe4, 0x36],
    [0x29, 0xad, 0xff],
    [0x83, 0x76, 0x9c],
    [0xff, 0x77, 0xa8],
    [0xff, 0xcc, 0xaa],
];

// DawnBringer 16, by DawnBringer (https://lospec.com/palette-list/dawnbringer-16).
const DB16: [Rgb; 16] = [
    [0x14, 0x0c, 0x1c],
    [0x44, 0x24, 0x34],
    [0x30, 0x34, 0x6d],
    [0x4e, 0x4a, 0x4e],
    [0x85, 0x4c, 0x30],
    [0x34, 0x65, 0x24],
    [0xd0, 0x46, 0x48],
    [0x75, 0x71, 0x61],
    [0x59, 0x7d, 0xce],
    [0xd2, 0x7d, 0x2c],
    [0x85, 0x95, 0xa1],
    [0x6d, 0xaa, 0x2c],
    [0xd2, 0xaa, 0x99],
    [0x6d, 0xc2, 0xca],
    [0xda, 0xd4, 0x5e],
    [0xde, 0xee, 0xd6],
];

// DawnBringer 32, by DawnBringer (https://lospec.com/palette-list/dawnbringer-32).
const DB32: [Rgb; 32] = [
    [0x00, 0x00, 0x00],
    [0x22, 0x20, 0x34],
    [0x45, 0x28, 0x3c],
    [0x66, 0x39, 0x31],
    [0x8f, 0x56, 0x3b],
    [0xdf, 0x71, 0x26],
    [0xd9, 0xa0, 0x66],
    [0xee, 0xc3, 0x9a],
    [0xfb, 0xf2, 0x36],
    [0x99, 0xe5, 0x50],
    [0x6a, 0xbe, 0x30],
    [0x37, 0x94, 0x6e],
    [0x4b, 0x69, 0x2f],
    [0x52, 0x4b, 0x24],
    [0x32, 0x3c, 0x39],
    [0x3f, 0x3f, 0x74],
    [0x30, 0x60, 0x82],
    [0x5b, 0x6e, 0xe1],
    [0x63, 0x9b, 0xff],
    [0x5f, 0xcd, 0xe4],
    [0xcb, 0xdb, 0xfc],
    [0xff, 0xff, 0xff],
    [0x9b, 0xad, 0xb7],
    [0x84, 0x7e, 0x87],
    [0x69, 0x6a, 0x6a],
    [0x59, 0x56, 0x52],
    [0x76, 0x42, 0x8a],
    [0xac, 0x32, 0x32],
    [0xd9, 0x57, 0x63],
    [0xd7, 0x7b, 0xba],
    [0x8f, 0x97, 0x4a],
    [0x8a, 0x6f, 0x30],
];

// Endesga 32, by ENDESGA (https://lospec.com/palette-list/endesga-32).
// This is the Lospec version; older Aseprite "edg32" files differ slightly.
const ENDESGA_32: [Rgb; 32] = [
    [0xbe, 0x4a, 0x2f],
    [0xd7, 0x76, 0x43],
    [0xea, 0xd4, 0xaa],
    [0xe4, 0xa6, 0x72],
    [0xb8, 0x6f, 0x50],
    [0x73, 0x3e, 0x39],
    [0x3e, 0x27, 0x31],
    [0xa2, 0x26, 0x33],
    [0xe4, 0x3b, 0x44],
    [0xf7, 0x76, 0x22],
    [0xfe, 0xae, 0x34],
    [0xfe, 0xe7, 0x61],
    [0x63, 0xc7, 0x4d],
    [0x3e, 0x89, 0x48],
    [0x26, 0x5c, 0x42],
    [0x19, 0x3c, 0x3e],
    [0x12, 0x4e, 0x89],
    [0x00, 0x99, 0xdb],
    [0x2c, 0xe8, 0xf5],
    [0xff, 0xff, 0xff],
    [0xc0, 0xcb, 0xdc],
    [0x8b, 0x9b, 0xb4],
    [0x5a, 0x69, 0x88],
    [0x3a, 0x44, 0x66],
    [0x26, 0x2b, 0x44],
    [0x18, 0x14, 0x25],
    [0xff, 0x00, 0x44],
    [0x68, 0x38, 0x6c],
    [0xb5, 0x50, 0x88],
    [0xf6, 0x75, 0x7a],
    [0xe8, 0xb7, 0x96],
    [0xc2, 0x85, 0x69],
];

// Sweetie 16, by GrafxKid (https://lospec.com/palette-list/sweetie-16).
const SWEETIE_16: [Rgb; 16] = [
    [0x1a, 0x1c, 0x2c],
    [0x5d, 0x27, 0x5d],
    [0xb1, 0x3e, 0x53],
    [0xef, 0x7d, 0x57],
    [0xff, 0xcd, 0x75],
    [0xa7, 0xf0, 0x70],
    [0x38, 0xb7, 0x64],
    [0x25, 0x71, 0x79],
    [0x29, 0x36, 0x6f],
    [0x3b, 0x5d, 0xc9],
    [0x41, 0xa6, 0xf6],
    [0x73, 0xef, 0xf7],
    [0xf4, 0xf4, 0xf4],
    [0x94, 0xb0, 0xc2],
    [0x56, 0x6c, 0x86],
    [0x33, 0x3c, 0x57],
];

/// The byte-order mark some editors put at the start of text files.
const BOM: char = '\u{feff}';

impl Palette {
    /// Built-in palette names, sorted. Each is accepted by [`Palette::builtin`].
    pub const BUILTIN_NAMES: &'static [&'static str] =
        &["db16", "db32", "endesga-32", "pico-8", "sweetie-16"];

    /// Looks up a built-in palette by name.
    ///
    /// Matching ignores ASCII case, and `-`, `_` and spaces, so `"PICO-8"`,
    /// `"pico8"`, `"endesga32"` and `"Sweetie 16"` all work. The returned
    /// palette carries the canonical name from [`Palette::BUILTIN_NAMES`].
    pub fn builtin(name: &str) -> Option<Palette> {
        let key: String = name
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let (canonical, colors): (&str, &[Rgb]) = match key.as_str() {
            "pico8" => ("pico-8", &PICO_8),
            "db16" | "dawnbringer16" => ("db16", &DB16),
            "db32" | "dawnbringer32" => ("db32", &DB32),
            "endesga32" | "edg32" => ("endesga-32", &ENDESGA_32),
            "sweetie16" => ("sweetie-16", &SWEETIE_16),
            _ => return None,
        };
        Some(Palette {
            name: canonical.to_owned(),
            colors: colors.to_vec(),
        })
    }

    /// Parses a Lospec `.hex` file: one `RRGGBB` colour per line, with an
    /// optional leading `#`, hex digits in either case, blank lines and CRLF
    /// line endings allowed. Colours with alpha (8 digits) are rejected.
    pub fn from_hex(name: &str, src: &str) -> Result<Palette, PaletteParseError> {
        let mut colors = Vec::new();
        for (idx, raw) in strip_bom(src).lines().enumerate() {
            if let Some(color) = parse_hex_line(raw, idx + 1)? {
                colors.push(color);
            }
        }
        Palette::from_colors(name, colors)
    }

    /// Parses a GIMP `.gpl` file: a `GIMP Palette` header line, optional
    /// `Name:` / `Columns:` lines, `#` comments and blank lines, then one
    /// `R G B [name]` line per colour (whitespace separated, decimal 0-255).
    pub fn from_gpl(name: &str, src: &str) -> Result<Palette, PaletteParseError> {
        let mut lines = strip_bom(src).lines().enumerate();
        let header = lines.next().map(|(_, l)| l.trim()).unwrap_or("");
        // GIMP itself only checks the prefix, so do the same.
        if !header.starts_with("GIMP Palette") {
            let found = if header.is_empty() {
                "an empty line".to_owned()
            } else {
                format!("{:?}", truncate(header, 40))
            };
            return Err(syntax(
                1,
                1,
                format!("expected the header line \"GIMP Palette\", found {found}"),
            ));
        }

        let mut colors = Vec::new();
        for (idx, raw) in lines {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || is_gpl_field(line) {
                continue;
            }
            colors.push(parse_gpl_color(raw, idx + 1)?);
        }
        Palette::from_colors(name, colors)
    }

    /// Builds a palette from a list of colours, keeping the first occurrence
    /// of each colour and dropping later duplicates. Fails with
    /// [`PaletteParseError::Empty`] if the list is empty.
    pub fn from_colors(name: &str, colors: Vec<Rgb>) -> Result<Palette, PaletteParseError> {
        let mut seen = HashSet::with_capacity(colors.len());
        let colors: Vec<Rgb> = colors.into_iter().filter(|c| seen.insert(*c)).collect();
        if colors.is_empty() {
            return Err(PaletteParseError::Empty);
        }
        Ok(Palette {
            name: name.to_owned(),
            colors,
        })
    }

    /// The file a palette spec names (`.hex` or `.gpl`, relative to `dir`), if any.
    pub fn file_of(spec: &str, dir: &Path) -> Option<PathBuf> {
        let lower = spec.to_ascii_lowercase();
        (lower.ends_with(".hex") || lower.ends_with(".gpl")).then(|| dir.join(spec))
    }

    /// A palette spec as the manifest and the CLI take it: a `.hex` or `.gpl` file
    /// (relative to `dir`), else a built-in name.
    pub fn load(spec: &str, dir: &Path) -> Result<Palette, PaletteLoadError> {
        let Some(path) = Palette::file_of(spec, dir) else {
            return Palette::builtin(spec).ok_or_else(|| PaletteLoadError::Unknown {
                name: spec.to_owned(),
            });
        };
        let text = crate::input_file::read_to_string(
            &path,
            crate::input_file::MAX_PALETTE_BYTES,
            "palette file",
        )
        .map_err(|source| PaletteLoadError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let parsed = if spec.to_ascii_lowercase().ends_with(".hex") {
            Palette::from_hex(spec, &text)
        } else {
            Palette::from_gpl(spec, &text)
        };
        parsed.map_err(|source| PaletteLoadError::Invalid { path, source })
    }

    /// The palette's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The palette's colours, in order, without duplicates.
    pub fn colors(&self) -> &[Rgb] {
        &self.colors
    }

    /// The palette colour nearest to `color` by Euclidean distance in OKLab;
    /// ties go to the lowest index. Exact members map to themselves.
    pub fn nearest(&self, color: Rgb) -> Rgb {
        nearest_in(&self.colors, &self.labs(), color)
    }

    /// Maps every pixel with alpha > 0 to its nearest palette colour, keeping
    /// its alpha. Fully transparent pixels are left untouched.
    pub fn apply(&self, image: &mut image::RgbaImage) {
        let labs = self.labs();
        // Sprites have few distinct colours, so memoising per colour turns
        // the per-pixel palette scan into a hash lookup.
        let mut memo: HashMap<Rgb, Rgb> = HashMap::new();
        for px in image.pixels_mut() {
            let [r, g, b, a] = px.0;
            if a == 0 {
                continue;
            }
            let [nr, ng, nb] = *memo
                .entry([r, g, b])
                .or_insert_with(|| nearest_in(&self.colors, &labs, [r, g, b]));
            px.0 = [nr, ng, nb, a];
        }
    }

    /// Stable content fingerprint input: the colours, in order, as
    /// `R G B` bytes. The name is deliberately excluded.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.colors.as_flattened().to_vec()
    }

    /// OKLab of every colour; kept out of the struct so it can derive `Eq`.
    fn labs(&self) -> Vec<Lab> {
        self.colors.iter().map(|&c| srgb_to_oklab(c)).collect()
    }
}

/// Nearest colour in `colors` (with matching precomputed `labs`) to `color`.
fn nearest_in(colors: &[Rgb], labs: &[Lab], color: Rgb) -> Rgb {
    // Exact members must map to themselves even if float error could tie.
    if colors.contains(&color) {
        return color;
    }
    // `Palette` is never empty, so the index is in range.
    colors[crate::color::nearest(labs, &srgb_to_oklab(color))]
}

/// A `#RRGGBB` (or `RRGGBB`) colour, as the manifest and the CLI write colours.
pub fn parse_hex_color(text: &str) -> Option<Rgb> {
    let hex = text.strip_prefix('#').unwrap_or(text);
    if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let channel = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([channel(0)?, channel(2)?, channel(4)?])
}

fn syntax(line: usize, column: usize, message: String) -> PaletteParseError {
    PaletteParseError::Syntax {
        line,
        column,
        message,
    }
}

fn strip_bom(src: &str) -> &str {
    src.strip_prefix(BOM).unwrap_or(src)
}

/// At most `max` characters of `s`, for quoting user text in messages.
fn truncate(s: &str, max: usize) -> &str {
    s.char_indices()
        .nth(max)
        .map_or(s, |(i, _)| s.get(..i).unwrap_or(s))
}

/// Parses one `.hex` line; `Ok(None)` for a blank line.
fn parse_hex_line(raw: &str, line: usize) -> Result<Option<Rgb>, PaletteParseError> {
    let body = raw.trim_start();
    // Columns count characters, so leading whitespace shifts them.
    let mut column = raw.chars().count() - body.chars().count() + 1;
    let body = body.trim_end();
    if body.is_empty() {
        return Ok(None);
    }
    let digits = match body.strip_prefix('#') {
        Some(rest) => {
            column += 1;
            rest
        }
        None => body,
    };
    let mut rgb = [0u8; 3];
    let mut count = 0usize;
    for (i, ch) in digits.chars().enumerate() {
        let Some(v) = ch.to_digit(16) else {
            return Err(syntax(
                line,
                column + i,
                format!(
                    "unexpected character {ch:?}; expected a hex digit (0-9, A-F) of an RRGGBB colour"
                ),
            ));
        };
        // Fill RRGGBB nibble by nibble; extra digits are reported below.
        if let Some(slot) = rgb.get_mut(i / 2) {
            *slot = (*slot << 4) | v as u8;
        }
        count += 1;
    }
    match count {
        6 => Ok(Some(rgb)),
        8 => Err(syntax(
            line,
            column,
            "found 8 hex digits, but colours with alpha (AARRGGBB / RRGGBBAA) are not supported; expected 6 hex digits RRGGBB".to_owned(),
        )),
        n => Err(syntax(
            line,
            column,
            format!("found {n} hex digits; expected exactly 6 (RRGGBB)"),
        )),
    }
}

/// `Name:` and `Columns:` header fields of a `.gpl` file.
fn is_gpl_field(line: &str) -> bool {
    ["name:", "columns:"].iter().any(|key| {
        line.get(..key.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(key))
    })
}

/// Parses one `R G B [name]` line of a `.gpl` file.
fn parse_gpl_color(raw: &str, line: usize) -> Result<Rgb, PaletteParseError> {
    const CHANNELS: [&str; 3] = ["red", "green", "blue"];
    let mut tokens = tokens_with_columns(raw).into_iter();
    let mut rgb = [0u8; 3];
    for (slot, channel) in rgb.iter_mut().zip(CHANNELS) {
        let Some((column, tok)) = tokens.next() else {
            // Point just past the last thing on the line.
            let column = raw.trim_end().chars().count() + 1;
            return Err(syntax(
                line,
                column,
                format!(
                    "missing {channel} component; expected three decimal values \"R G B\" (0-255), optionally followed by a name"
                ),
            ));
        };
        if tok.is_empty() || !tok.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax(
                line,
                column,
                format!(
                    "expected a decimal number 0-255 for the {channel} component, found {:?}",
                    truncate(tok, 20)
                ),
            ));
        }
        // Over-long digit strings fail to parse; report them as out of range too.
        match tok.parse::<u32>().ok().and_then(|v| u8::try_from(v).ok()) {
            Some(v) => *slot = v,
            None => {
                return Err(syntax(
                    line,
                    column,
                    format!(
                        "{channel} value {} is out of range; expected 0-255",
                        truncate(tok, 20)
                    ),
                ));
            }
        }
    }
    Ok(rgb)
}

/// Whitespace-separated tokens of `line`, each with its 1-based character column.
fn tokens_with_columns(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (byte offset, column)
    for (col, (byte, ch)) in line.char_indices().enumerate() {
        match (ch.is_whitespace(), start) {
            (false, None) => start = Some((byte, col + 1)),
            (true, Some((s, c))) => {
                out.extend(line.get(s..byte).map(|t| (c, t)));
                start = None;
            }
            _ => {}
        }
    }
    if let Some((s, c)) = start {
        out.extend(line.get(s..).map(|t| (c, t)));
    }
    out
}

#[cfg(test)]
mod tests {
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
        let (line, column, msg) =
            syntax_at(Palette::from_hex("x", "000000\n\n12345G\n").unwrap_err());
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
        let (line, column, msg) =
            syntax_at(Palette::from_hex("x", "000000\r\nFF004\r\n").unwrap_err());
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
        let (line, column, msg) =
            syntax_at(Palette::from_gpl("x", "Name: foo\n0 0 0\n").unwrap_err());
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
}
