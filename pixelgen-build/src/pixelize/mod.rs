//! Raw generator output → a finished sprite: exact size, a clean grid, a limited
//! palette, binary alpha.
//!
//! The stages, in order: `grid` finds the fake pixels, `cells` takes one robust
//! colour per fake pixel, `colors` maps cells onto a palette (given, or found), and
//! `background` makes the background transparent and draws an optional outline.

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

use crate::generate::conditioning::Tiling;
use crate::manifest::{Background, SpriteSpec};
use crate::palette::{Palette, Rgb};
use raster::{ALPHA_THRESHOLD, Raster};

/// Part of the key of every pixelized sprite: bump it when the output changes.
pub const PIXELIZE_VERSION: &str = "pixelgen-pixelize-2";

/// Part of the key of a true-pixel sprite (the procedural generator's) with `max_colors`:
/// bump it when [`limit_colors`] changes.
pub const LIMIT_COLORS_VERSION: &str = "pixelgen-limit-colors-1";

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
    /// The axes a seamless tile wraps on: its grid divides the frame evenly there, cells
    /// see their neighbours across the edge, nothing is taken for background by a
    /// flood from the border, and the outline wraps.
    pub tiling: Option<Tiling>,
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
            tiling: sprite.conditioning.tiling,
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
    let mut grid = grid::fit(&raster, columns, rows);
    // A tile's fake pixels cannot sit at a phase: the cells must divide the period, or
    // the first and last cells would each hold part of one pixel across the seam.
    let wraps = options
        .tiling
        .map_or((false, false), |t| (t.wraps_x(), t.wraps_y()));
    if wraps.0 {
        grid.columns = grid::Grid::uniform(0.0, raster.width as f64, columns);
    }
    if wraps.1 {
        grid.rows = grid::Grid::uniform(0.0, raster.height as f64, rows);
    }
    let cells = cells::Cells::sample(&raster, &grid, wraps);
    let mut colors = colors::resolve(
        &raster,
        &cells,
        options.palette.as_ref(),
        options.max_colors,
    );
    let drew_background = raster.has_transparency();
    background::finish(
        &mut colors,
        (columns, rows),
        options,
        drew_background,
        wraps,
    );
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
    match (&sprite.palette, sprite.max_colors) {
        (Some(palette), _) => palette.apply(&mut image),
        (None, Some(max)) => limit_colors(&mut image, max as usize),
        (None, None) => {}
    }
    if let Some(outline) = sprite.outline {
        let wraps = sprite
            .conditioning
            .tiling
            .map_or((false, false), |t| (t.wraps_x(), t.wraps_y()));
        background::outline_image(&mut image, outline, wraps);
    }
    image
}

/// Leaves at most `max` colours among the visible pixels of a true-pixel image: the two
/// nearest colours (in OKLab) merge, the rarer into the more frequent, until `max` are
/// left, so every colour that remains is one the image had. Ties go to the first pair in
/// colour order: the result does not depend on pixel order.
pub fn limit_colors(image: &mut RgbaImage, max: usize) {
    use std::collections::{BTreeMap, HashMap};
    let max = max.max(1);
    let mut counts: BTreeMap<Rgb, u64> = BTreeMap::new();
    for pixel in image.pixels().filter(|p| p[3] > 0) {
        *counts.entry([pixel[0], pixel[1], pixel[2]]).or_default() += 1;
    }
    if counts.len() <= max {
        return;
    }
    // Each cluster: its colour (its most frequent member), total count, OKLab, members.
    let mut clusters: Vec<(Rgb, u64, [f32; 3], Vec<Rgb>)> = counts
        .into_iter()
        .map(|(rgb, n)| (rgb, n, crate::color::srgb_to_oklab(rgb), vec![rgb]))
        .collect();
    while clusters.len() > max {
        let mut best = (f32::INFINITY, 0, 1);
        for i in 0..clusters.len() {
            for j in i + 1..clusters.len() {
                let (a, b) = (clusters[i].2, clusters[j].2);
                let d = (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f32>();
                if d < best.0 {
                    best = (d, i, j);
                }
            }
        }
        let (_, i, j) = best;
        let (keep, gone) = if clusters[i].1 >= clusters[j].1 {
            (i, j)
        } else {
            (j, i)
        };
        let merged = clusters.remove(gone);
        let keep = if gone < keep { keep - 1 } else { keep };
        clusters[keep].1 += merged.1;
        clusters[keep].3.extend(merged.3);
    }
    let target: HashMap<Rgb, Rgb> = clusters
        .iter()
        .flat_map(|(rgb, _, _, members)| members.iter().map(move |m| (*m, *rgb)))
        .collect();
    for pixel in image.pixels_mut().filter(|p| p[3] > 0) {
        let [r, g, b] = target[&[pixel[0], pixel[1], pixel[2]]];
        (pixel[0], pixel[1], pixel[2]) = (r, g, b);
    }
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
    fn max_colors_limits_a_true_pixel_sprite_to_colours_it_had() {
        // Three reds and a blue, most pixels one red.
        let image = RgbaImage::from_fn(4, 4, |x, y| match (x, y) {
            (0, 0) => Rgba([200, 0, 0, 255]),
            (1, 0) => Rgba([210, 10, 5, 255]),
            (2, 0) => Rgba([0, 0, 255, 255]),
            (3, 3) => Rgba([0, 0, 0, 0]),
            _ => Rgba([220, 0, 0, 255]),
        });
        let out = finish(image.clone(), &sprite(", max_colors: 2"));
        let colors: std::collections::BTreeSet<[u8; 3]> = out
            .pixels()
            .filter(|p| p[3] > 0)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        assert_eq!(colors, [[0, 0, 255], [220, 0, 0]].into_iter().collect());
        assert_eq!(out.get_pixel(3, 3)[3], 0, "transparent pixels stay");
        // Enough colours already: nothing changes.
        assert_eq!(
            finish(image.clone(), &sprite(", max_colors: 4")),
            finish(image, &sprite(""))
        );
    }

    #[test]
    fn palette_maps_opaque_pixels_and_resizes_to_exact_size() {
        let big = image::imageops::resize(&raw(), 16, 16, image::imageops::FilterType::Nearest);
        let out = finish(big, &sprite(", palette: \"pico-8\""));
        assert_eq!(out.dimensions(), (4, 4));
        assert_eq!(out.get_pixel(3, 3), &Rgba([0xff, 0x00, 0x4d, 255]));
    }
}
