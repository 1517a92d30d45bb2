//! The background: found by a flood fill from the border, made transparent (or one
//! colour), and an optional 1-pixel outline around what remains.

use image::{Rgba, RgbaImage};

use super::Options;
use super::raster::ALPHA_THRESHOLD;
use crate::color::{Rgb, srgb_to_oklab};
use crate::manifest::Background;

/// Colours this close (OKLab) to the border's colour are background too: a model's
/// flat background can land on two neighbouring palette entries.
const TOLERANCE: f32 = 0.04;
/// The border's commonest colour is the background only if it covers this share of
/// the border; otherwise the art reaches the edges and nothing is removed.
const MIN_BORDER_SHARE: f64 = 0.4;

/// Applies `options.background` and `options.outline` to the cell colours.
/// `drew_background`: the raw image had its own transparency, which is kept as is.
/// `wraps`: per axis, whether the image is a seamless tile there; a tile's border is not
/// a background's edge (nothing is flooded from it) and its outline wraps.
pub(crate) fn finish(
    colors: &mut [Option<Rgb>],
    (columns, rows): (usize, usize),
    options: &Options,
    drew_background: bool,
    wraps: (bool, bool),
) {
    let tile = wraps.0 || wraps.1;
    if options.background != Background::Keep && !drew_background && !tile {
        remove_flood(colors, columns, rows);
    }
    if let Some(outline) = options.outline {
        draw_outline(colors, (columns, rows), outline, wraps);
    }
    if let Background::Color(fill) = options.background {
        for cell in colors.iter_mut().filter(|c| c.is_none()) {
            *cell = Some(fill);
        }
    }
}

/// Flood fill from the border through cells of (about) the border's commonest colour.
fn remove_flood(colors: &mut [Option<Rgb>], columns: usize, rows: usize) {
    let border: Vec<usize> = (0..columns * rows)
        .filter(|&i| {
            let (x, y) = (i % columns, i / columns);
            x == 0 || y == 0 || x + 1 == columns || y + 1 == rows
        })
        .collect();
    let mut counts: Vec<(Rgb, usize)> = Vec::new();
    for &i in &border {
        if let Some(c) = colors[i] {
            match counts.iter_mut().find(|(k, _)| *k == c) {
                Some(entry) => entry.1 += 1,
                None => counts.push((c, 1)),
            }
        }
    }
    // Most common; ties go to the smaller colour so the result never depends on order.
    let Some(&(background, count)) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
    else {
        return;
    };
    if (count as f64) < MIN_BORDER_SHARE * border.len() as f64 {
        return;
    }
    let target = srgb_to_oklab(background);
    let is_background = |c: Option<Rgb>| {
        c.is_some_and(|c| {
            let lab = srgb_to_oklab(c);
            (0..3).map(|k| (lab[k] - target[k]).powi(2)).sum::<f32>() <= TOLERANCE * TOLERANCE
        })
    };
    let mut stack: Vec<usize> = border
        .into_iter()
        .filter(|&i| is_background(colors[i]))
        .collect();
    while let Some(i) = stack.pop() {
        if !is_background(colors[i]) {
            continue;
        }
        colors[i] = None;
        let (x, y) = (i % columns, i / columns);
        if x > 0 {
            stack.push(i - 1);
        }
        if x + 1 < columns {
            stack.push(i + 1);
        }
        if y > 0 {
            stack.push(i - columns);
        }
        if y + 1 < rows {
            stack.push(i + columns);
        }
    }
}

/// Transparent cells that touch an opaque one (4-neighbours, across the edges an axis
/// wraps on) take the outline colour.
fn draw_outline(
    colors: &mut [Option<Rgb>],
    (columns, rows): (usize, usize),
    outline: Rgb,
    wraps: (bool, bool),
) {
    let opaque = |x: isize, y: isize| {
        let x = if wraps.0 {
            x.rem_euclid(columns as isize)
        } else {
            x
        };
        let y = if wraps.1 {
            y.rem_euclid(rows as isize)
        } else {
            y
        };
        x >= 0
            && y >= 0
            && (x as usize) < columns
            && (y as usize) < rows
            && colors[y as usize * columns + x as usize].is_some()
    };
    let ring: Vec<usize> = (0..columns * rows)
        .filter(|&i| colors[i].is_none())
        .filter(|&i| {
            let (x, y) = ((i % columns) as isize, (i / columns) as isize);
            opaque(x - 1, y) || opaque(x + 1, y) || opaque(x, y - 1) || opaque(x, y + 1)
        })
        .collect();
    for i in ring {
        colors[i] = Some(outline);
    }
}

/// [`draw_outline`] on a finished image (sprites drawn at their own size).
pub(crate) fn outline_image(image: &mut RgbaImage, outline: Rgb, wraps: (bool, bool)) {
    let (columns, rows) = (image.width() as usize, image.height() as usize);
    let mut colors: Vec<Option<Rgb>> = image
        .pixels()
        .map(|p| (p[3] >= ALPHA_THRESHOLD).then_some([p[0], p[1], p[2]]))
        .collect();
    let before: Vec<bool> = colors.iter().map(Option::is_some).collect();
    draw_outline(&mut colors, (columns, rows), outline, wraps);
    for (i, pixel) in image.pixels_mut().enumerate() {
        if !before[i]
            && let Some([r, g, b]) = colors[i]
        {
            *pixel = Rgba([r, g, b, 255]);
        }
    }
}
