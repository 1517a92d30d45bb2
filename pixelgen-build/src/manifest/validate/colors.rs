//! The colour checks: a sprite's background, colour count and outline colour, and its
//! palette (built in, or a file beside the manifest, which becomes an input file).

use std::ops::Range;

use crate::manifest::Background;
use crate::manifest::merge::Merged;
use crate::manifest::raw::RawBackground;
use crate::palette::{Palette, PaletteLoadError, parse_hex_color};

use super::{Invalid, SpriteEntry, Validator};

impl Validator<'_> {
    pub(super) fn background(
        &self,
        entry: &SpriteEntry<'_>,
        background: Merged<&RawBackground>,
    ) -> Result<Background, Invalid> {
        Ok(match background.value {
            None | Some(RawBackground::Transparent) => Background::Transparent,
            Some(RawBackground::Keep) => Background::Keep,
            Some(RawBackground::Color(hex)) => Background::Color(self.color(
                hex,
                &entry.span,
                format!("`{hex}` is not a colour"),
                "write the colour as `Color(\"#3a5f0b\")`",
            )?),
        })
    }

    pub(super) fn max_colors(
        &self,
        entry: &SpriteEntry<'_>,
        max_colors: Merged<u32>,
    ) -> Result<Option<u32>, Invalid> {
        if max_colors.value == Some(0) {
            return Err(self
                .error(
                    self.field_span(entry, "max_colors", &max_colors),
                    format!("sprite `{}`: `max_colors` must be at least 1", entry.name),
                )
                .label("zero colours")
                .help("leave `max_colors` out to keep every colour the image needs")
                .into());
        }
        Ok(max_colors.value)
    }

    /// A `#RRGGBB` colour; an error at the string (or the sprite) otherwise.
    pub(super) fn color(
        &self,
        hex: &str,
        sprite: &Range<usize>,
        message: String,
        help: &str,
    ) -> Result<[u8; 3], Invalid> {
        parse_hex_color(hex).ok_or_else(|| {
            let at = self
                .locator
                .string_literals(hex)
                .into_iter()
                .next()
                .unwrap_or(sprite.clone());
            self.error(at, message)
                .label("expected #RRGGBB")
                .help(help)
                .into()
        })
    }

    /// A built-in palette name, or a `.hex` / `.gpl` file beside the manifest.
    pub(super) fn palette(
        &self,
        name: &str,
        near: Option<&Range<usize>>,
    ) -> Result<Palette, Invalid> {
        let at = || {
            let literals = self.locator.string_literals(name);
            near.and_then(|n| literals.iter().find(|r| r.start >= n.end).cloned())
                .or_else(|| literals.into_iter().next())
                .unwrap_or(0..0)
        };
        if let Some(path) = Palette::file_of(name, self.dir) {
            // Even a missing or broken file must rerun the build when it changes.
            self.input_files.borrow_mut().push(path);
        }
        Palette::load(name, self.dir).map_err(|error| {
            let (label, help) = match &error {
                PaletteLoadError::Unreadable { .. } => (
                    "palette file",
                    "the path is relative to the folder of sprites.ron; check it exists".to_owned(),
                ),
                PaletteLoadError::Invalid { .. } => (
                    "this palette",
                    "a .hex file has one RRGGBB colour per line; a .gpl file is a GIMP palette"
                        .to_owned(),
                ),
                PaletteLoadError::Unknown { .. } => (
                    "not a built-in palette",
                    format!(
                        "use a built-in palette ({}) or a path to a .hex or .gpl file",
                        Palette::BUILTIN_NAMES.join(", ")
                    ),
                ),
            };
            self.error(at(), error.to_string())
                .label(label)
                .help(help)
                .into()
        })
    }
}
