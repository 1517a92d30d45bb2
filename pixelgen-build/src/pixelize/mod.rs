//! Raw generator output → a finished sprite: exact size, a clean grid, a limited
//! palette, binary alpha.
//!
//! The stages, in order: [`grid`] finds the fake pixels, [`cells`] takes one robust
//! colour per fake pixel, [`colors`] maps cells onto a palette (given, or found), and
//! [`background`] makes the background transparent and draws an optional outline.

// Channel and matrix loops (`for c in 0..3`) index several arrays at once; they read
// better as index loops than as zipped iterators.
#![allow(clippy::needless_range_loop)]

mod background;
mod cells;
mod colors;
mod grid;
mod raster;
#[cfg(test)]
mod tests;

use image::{Rgba, RgbaImage};

use crate::manifest::{Background, SpriteSpec};
use crate::palette::{Palette, Rgb};
use raster::{ALPHA_THRESHOLD, Raster};

/// Part of the key of every pixelized sprite: bump it when the output changes.
pub const PIXELIZE_VERSION: &str = "pixelgen-pixelize-2";

/// What a raw image is turned into.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Output size in (true) pixels.
    pub width: u32,
    pub height: u32,
    /// Colours to map onto; found from the image when `None`.
    pub palette: Option<Palette>,
    /// At most this many colours when the palette is found from the image.
    pub max_colors: Option<usize>,
    /// What happens to the background.
    pub background: Background,
    /// A 1-pixel outline drawn around the opaque pixels, in the transparent area.
    pub outline: Option<Rgb>,
}

impl Options {
    /// The options a sprite's manifest entry asks for.
    pub fn for_sprite(sprite: &SpriteSpec) -> Options {
        Options {
            width: sprite.width,
            height: sprite.height,
            palette: sprite.palette.clone(),
            max_colors: sprite.max_colors.map(|n| n as usize),
            background: sprite.background,
            outline: sprite.outline,
        }
    }
}

/// Turns pseudo pixel art of any size into `options.width` × `options.height` pixel art.
///
/// The raw image's own transparency, if it has any, is kept as the background; an
/// opaque image's background is found by a flood fill from the border. Both the raw
/// image and the output size must be at least 1×1 (the manifest and the CLI check it).
pub fn pixelize(raw: &RgbaImage, options: &Options) -> RgbaImage {
    let raster = Raster::from_rgba(raw);
    let (columns, rows) = (options.width as usize, options.height as usize);
    let grid = grid::fit(&raster, columns, rows);
    let cells = cells::Cells::sample(&raster, &grid);
    let mut colors = colors::resolve(
        &raster,
        &cells,
        options.palette.as_ref(),
        options.max_colors,
    );
    let drew_background = raster.has_transparency();
    background::finish(&mut colors, columns, rows, options, drew_background);
    RgbaImage::from_fn(options.width, options.height, |x, y| {
        match colors[y as usize * columns + x as usize] {
            Some([r, g, b]) => Rgba([r, g, b, 255]),
            None => Rgba([0, 0, 0, 0]),
        }
    })
}

/// Post-processes one raw frame for `sprite`.
///
/// A raw frame already at the sprite's size (the procedural generator draws true
/// pixels) only gets binary alpha, the background and the palette; anything else is
/// pixelized.
pub fn finish(raw: RgbaImage, sprite: &SpriteSpec) -> RgbaImage {
    if raw.dimensions() != (sprite.width, sprite.height) {
        return pixelize(&raw, &Options::for_sprite(sprite));
    }
    let mut image = raw;
    match sprite.background {
        Background::Transparent => binarize_alpha(&mut image),
        Background::Color(rgb) => fill_background(&mut image, rgb),
        Background::Keep => {}
    }
    if let Some(palette) = &sprite.palette {
        palette.apply(&mut image);
    }
    if let Some(outline) = sprite.outline {
        background::outline_image(&mut image, outline);
    }
    image
}

/// Binary alpha: pixel art has no half-transparent pixels. Transparent pixels become
/// (0,0,0,0) so that equal sprites encode to equal bytes.
fn binarize_alpha(image: &mut RgbaImage) {
    for pixel in image.pixels_mut() {
        if pixel[3] >= ALPHA_THRESHOLD {
            pixel[3] = 255;
        } else {
            *pixel = Rgba([0, 0, 0, 0]);
        }
    }
}

/// Composites the image over a solid colour.
fn fill_background(image: &mut RgbaImage, rgb: [u8; 3]) {
    for pixel in image.pixels_mut() {
        let alpha = u16::from(pixel[3]);
        for channel in 0..3 {
            let over = u16::from(pixel[channel]) * alpha + u16::from(rgb[channel]) * (255 - alpha);
            pixel[channel] = ((over + 127) / 255) as u8;
        }
        pixel[3] = 255;
    }
}

#[cfg(test)]
mod finish_tests {
    use super::*;
    use crate::manifest::parse;
    use std::path::Path;

    fn sprite(fields: &str) -> SpriteSpec {
        let text = format!("(sprites: {{ \"s\": (prompt: \"x\", size: (4, 4){fields}) }})");
        parse(Path::new("sprites.ron"), &text)
            .unwrap()
            .sprites
            .remove(0)
    }

    fn raw() -> RgbaImage {
        RgbaImage::from_fn(4, 4, |x, _| match x {
            0 => Rgba([10, 20, 30, 0]),
            1 => Rgba([250, 5, 80, 100]),
            _ => Rgba([250, 5, 80, 255]),
        })
    }

    #[test]
    fn transparent_background_gives_binary_alpha() {
        let out = finish(raw(), &sprite(""));
        assert_eq!(out.get_pixel(0, 0), &Rgba([0, 0, 0, 0]));
        assert_eq!(out.get_pixel(1, 0), &Rgba([0, 0, 0, 0]));
        assert_eq!(out.get_pixel(2, 0)[3], 255);
    }

    #[test]
    fn colour_background_makes_every_pixel_opaque() {
        let out = finish(raw(), &sprite(", background: Color(\"#0000ff\")"));
        assert!(out.pixels().all(|p| p[3] == 255));
        assert_eq!(out.get_pixel(0, 0), &Rgba([0, 0, 255, 255]));
    }

    #[test]
    fn palette_maps_opaque_pixels_and_resizes_to_exact_size() {
        let big = image::imageops::resize(&raw(), 16, 16, image::imageops::FilterType::Nearest);
        let out = finish(big, &sprite(", palette: \"pico-8\""));
        assert_eq!(out.dimensions(), (4, 4));
        assert_eq!(out.get_pixel(3, 3), &Rgba([0xff, 0x00, 0x4d, 255]));
    }
}
