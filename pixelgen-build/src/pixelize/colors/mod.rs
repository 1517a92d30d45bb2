//! Cell colours → palette colours.
//!
//! Resampling and blur mix every cell with its neighbours, most at small pitches, so a
//! cell's own colour is not its observed colour. The mixing is learnt from the image
//! itself (a small linear blur: how much of each side and corner neighbour is in a
//! cell's core), then each cell gets the palette colour that best explains what is
//! seen once its neighbours' share is taken out, a few rounds over the image (iterated
//! conditional modes). One-pixel details survive: their neighbours explain the halo, not
//! the centre.
//!
//! Without a palette, the palette is found first: cells whose neighbours all look the
//! same are unmixed, their colours are clustered in OKLab, and each cluster's colour is
//! the per-channel median of all its pixels, which recovers the intended colour exactly
//! under noise. Cells that no cluster explains (a detail colour used once) get a colour
//! of their own.

use std::collections::HashMap;

use super::cells::Cells;
use super::raster::{Raster, distance2, median};
use crate::color::{Lab, Rgb, srgb_to_oklab};
use crate::palette::Palette;

mod discover;
mod fit;
mod labels;

use discover::{
    cluster_unmixed, discover, drop_unused, limit_colors, merge_close, pixel_noise, unmixed_cells,
};
use fit::{correct_cast, settle_exact};
use labels::{refine, smooth};

/// Unmixed cells a colour needs to be found by clustering.
const MIN_SUPPORT: usize = 2;
/// Rounds of label refinement.
const ROUNDS: usize = 4;
/// RGB distance beyond which a lone deblurred cell is a colour of its own.
const UNEXPLAINED_RGB: f32 = 40.0;

/// The colour of every cell (row-major), `None` where the raw image was transparent.
pub(crate) fn resolve(
    raster: &Raster,
    cells: &Cells,
    palette: Option<&Palette>,
    max_colors: Option<usize>,
) -> Vec<Option<Rgb>> {
    let colors: Vec<Rgb>;
    let labels;
    match palette {
        Some(palette) => {
            colors = palette.colors().to_vec();
            let floats: Vec<[f32; 3]> = colors.iter().map(|c| c.map(f32::from)).collect();
            let observed = correct_cast(cells, &colors);
            let mut initial = nearest_all(&observed, &floats);
            refine(cells, &observed, &floats, &mut initial);
            smooth(cells, &observed, &floats, &mut initial);
            labels = initial;
        }
        None => {
            let unmixed = unmixed_cells(cells);
            let mut floats: Vec<[f32; 3]> = cluster_unmixed(raster, cells, &unmixed)
                .iter()
                .map(|c| c.map(f32::from))
                .collect();
            if floats.is_empty() {
                return vec![None; cells.len()];
            }
            let observed = &cells.centre;
            let mut current = nearest_all(observed, &floats);
            // Colours used only in thin lines are found before any blur is fitted:
            // missing, their misfits would be taken for blur.
            if discover(cells, observed, &mut floats, &mut current, false) {
                current = nearest_all(observed, &floats);
            }
            for _ in 0..3 {
                refine(cells, observed, &floats, &mut current);
                if !discover(cells, observed, &mut floats, &mut current, true) {
                    break;
                }
            }
            refine(cells, observed, &floats, &mut current);
            smooth(cells, observed, &floats, &mut current);
            drop_unused(&mut floats, &mut current, cells);
            // Splits of one colour by noise: closer than the noise can tell apart.
            let noise = pixel_noise(raster, cells, &unmixed);
            if merge_close(&mut floats, &mut current, cells, (2.5 * noise).min(7.0)) {
                refine(cells, observed, &floats, &mut current);
                drop_unused(&mut floats, &mut current, cells);
            }
            if let Some(max) = max_colors {
                limit_colors(&mut floats, &mut current, cells, max.max(1));
            }
            let mut exact = settle_exact(raster, cells, &floats, &current);
            // Labels that settled on (nearly) the same colour are one colour: pool them.
            let mut settled: Vec<[f32; 3]> = exact.iter().map(|c| c.map(f32::from)).collect();
            if merge_close(
                &mut settled,
                &mut current,
                cells,
                (2.5 * noise).clamp(2.0, 7.0),
            ) {
                exact = settle_exact(raster, cells, &settled, &current);
            }
            colors = exact;
            labels = current;
        }
    }
    labels
        .iter()
        .zip(&cells.opaque)
        .map(|(&l, &opaque)| opaque.then(|| colors[l]))
        .collect()
}

fn nearest_all(observed: &[[f32; 3]], colors: &[[f32; 3]]) -> Vec<usize> {
    let labs = labs_of(colors);
    observed.iter().map(|&o| nearest(&labs, o)).collect()
}

fn labs_of(colors: &[[f32; 3]]) -> Vec<[f32; 3]> {
    colors.iter().map(|&c| oklab(c)).collect()
}

/// OKLab of an RGB float colour, rounded to 8 bits first.
fn oklab(color: [f32; 3]) -> Lab {
    srgb_to_oklab(to_rgb(color))
}

fn to_rgb(color: [f32; 3]) -> Rgb {
    color.map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// Index of the colour in `labs` nearest to `color` (RGB floats) in OKLab.
fn nearest(labs: &[Lab], color: [f32; 3]) -> usize {
    crate::color::nearest(labs, &oklab(color))
}

#[cfg(test)]
mod tests;
