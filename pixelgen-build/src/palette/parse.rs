//! The palette file parsers (Lospec `.hex`, GIMP `.gpl`) and the `#RRGGBB` colour parser,
//! each error at the line and column it is found, with what was expected.

use super::{Palette, Rgb};

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

/// The byte-order mark some editors put at the start of text files.
const BOM: char = '\u{feff}';

impl Palette {
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
