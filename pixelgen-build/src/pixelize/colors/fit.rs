//! Settling the colours: exact medians where enough unmixed pixels agree, a least-squares fit through the blur elsewhere, and the colour-cast correction towards a given palette.

use super::discover::{pixel_centre, unmixed_cells};
use super::labels::{Blur, fit_blur, neighbour_labels};
use super::*;

/// A fitted blur leaving a cell at least this much of its own colour is no blur.
const CRISP: f32 = 0.97;

/// Unmixed pixels needed before a colour is their median rather than the fit.
const EXACT_PIXELS: usize = 60;

/// The final colours. Where a colour has enough unmixed pixels (cells whose neighbours
/// all carry its label), their per-channel median, which is exact under noise; otherwise
/// the least-squares colour that, blurred with its neighbours, best reproduces the
/// cores of all of its cells.
pub(super) fn settle_exact(
    raster: &Raster,
    cells: &Cells,
    colors: &[[f32; 3]],
    labels: &[usize],
) -> Vec<Rgb> {
    let blur = fit_blur(cells, &cells.centre, colors, labels);
    let fitted = fit_colors(cells, &cells.centre, colors, labels, blur);
    // Crisp fake pixels (next to no blur) are pure across the whole cell, mixed with
    // their neighbours or not: every cell of a colour then gives exact pixels.
    let crisp = blur.own >= CRISP;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); colors.len()];
    for i in (0..cells.len()).filter(|&i| cells.opaque[i]) {
        if cells.around[i].iter().all(|&j| labels[j] == labels[i]) {
            members[labels[i]].push(i);
        }
    }
    members
        .into_iter()
        .enumerate()
        .map(|(k, members)| {
            let pixels: usize = members
                .iter()
                .map(|&i| cells.pixels(raster, i).count())
                .sum();
            if pixels >= EXACT_PIXELS
                && let Some(exact) = pixel_centre(raster, cells, members.into_iter())
            {
                exact
            } else if crisp
                && let Some(exact) = pixel_centre(
                    raster,
                    cells,
                    (0..cells.len()).filter(|&i| cells.opaque[i] && labels[i] == k),
                )
            {
                exact
            } else {
                to_rgb(fitted[k])
            }
        })
        .collect()
}

/// Least squares for all colours at once: each cell's core mean is its own colour and
/// its neighbours' colours mixed by `blur` (see [`neighbour_sums`]).
fn fit_colors(
    cells: &Cells,
    observed: &[[f32; 3]],
    colors: &[[f32; 3]],
    labels: &[usize],
    blur: Blur,
) -> Vec<[f32; 3]> {
    let k = colors.len();
    let mut normal = vec![0f64; k * k];
    let mut rhs = vec![[0f64; 3]; k];
    let mut row = vec![0f64; k];
    for i in (0..cells.len()).filter(|&i| cells.opaque[i]) {
        row.iter_mut().for_each(|r| *r = 0.0);
        row[labels[i]] += f64::from(blur.own);
        for (kind, j) in neighbour_labels(cells, labels, i) {
            let weight = [blur.horizontal, blur.vertical, blur.diagonal][kind];
            row[j] += f64::from(weight);
        }
        for a in 0..k {
            if row[a] == 0.0 {
                continue;
            }
            for b in 0..k {
                normal[a * k + b] += row[a] * row[b];
            }
            for c in 0..3 {
                rhs[a][c] += row[a] * f64::from(observed[i][c]);
            }
        }
    }
    // A whisper of the current colours keeps the system well posed.
    for a in 0..k {
        normal[a * k + a] += 1e-3;
        for c in 0..3 {
            rhs[a][c] += 1e-3 * f64::from(colors[a][c]);
        }
    }
    solve(normal, rhs, k)
        .map(|x| {
            x.into_iter()
                .map(|v| v.map(|c| c.clamp(0.0, 255.0) as f32))
                .collect()
        })
        .unwrap_or_else(|| colors.to_vec())
}

/// Gaussian elimination with partial pivoting, three right-hand sides.
pub(super) fn solve(mut a: Vec<f64>, mut b: Vec<[f64; 3]>, k: usize) -> Option<Vec<[f64; 3]>> {
    for col in 0..k {
        let pivot =
            (col..k).max_by(|&x, &y| a[x * k + col].abs().total_cmp(&a[y * k + col].abs()))?;
        if a[pivot * k + col].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for j in 0..k {
                a.swap(col * k + j, pivot * k + j);
            }
            b.swap(col, pivot);
        }
        for r in col + 1..k {
            let f = a[r * k + col] / a[col * k + col];
            if f == 0.0 {
                continue;
            }
            for j in col..k {
                a[r * k + j] -= f * a[col * k + j];
            }
            for c in 0..3 {
                b[r][c] -= f * b[col][c];
            }
        }
    }
    let mut x = vec![[0f64; 3]; k];
    for r in (0..k).rev() {
        for c in 0..3 {
            let mut sum = b[r][c];
            for j in r + 1..k {
                sum -= a[r * k + j] * x[j][c];
            }
            x[r][c] = sum / a[r * k + r];
        }
    }
    Some(x)
}

/// Undoes a colour cast against a given palette: a per-channel gain and offset fitted
/// from unmixed cells, kept only if it makes the image fit the palette far better.
pub(super) fn correct_cast(cells: &Cells, palette: &[Rgb]) -> Vec<[f32; 3]> {
    let unmixed = unmixed_cells(cells);
    let samples: Vec<[f32; 3]> = (0..cells.len())
        .filter(|&i| unmixed[i])
        .map(|i| cells.core[i])
        .collect();
    let floats: Vec<[f32; 3]> = palette.iter().map(|c| c.map(f32::from)).collect();
    let misfit = |gain: [f32; 3], offset: [f32; 3]| -> (f32, Vec<usize>) {
        let mut total = 0.0;
        let mut matches = Vec::with_capacity(samples.len());
        for s in &samples {
            let corrected: [f32; 3] = std::array::from_fn(|c| (s[c] - offset[c]) / gain[c]);
            let (d, k) = floats
                .iter()
                .enumerate()
                .map(|(k, p)| (distance2(p, &corrected), k))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or((0.0, 0));
            total += d.sqrt();
            matches.push(k);
        }
        (total / samples.len().max(1) as f32, matches)
    };
    let identity = ([1.0f32; 3], [0.0f32; 3]);
    let (before, mut matches) = misfit(identity.0, identity.1);
    let mut fitted = identity;
    for _ in 0..6 {
        let mut gain = [1.0f32; 3];
        let mut offset = [0.0f32; 3];
        for c in 0..3 {
            // Least squares of observed = gain × palette + offset.
            let (mut sx, mut sy, mut sxx, mut sxy, n) =
                (0f64, 0f64, 0f64, 0f64, samples.len() as f64);
            for (s, &k) in samples.iter().zip(&matches) {
                let (x, y) = (f64::from(floats[k][c]), f64::from(s[c]));
                sx += x;
                sy += y;
                sxx += x * x;
                sxy += x * y;
            }
            let var = sxx - sx * sx / n.max(1.0);
            if var > 1e-6 {
                let g = (sxy - sx * sy / n) / var;
                gain[c] = g as f32;
                offset[c] = ((sy - g * sx) / n) as f32;
            }
        }
        fitted = (gain, offset);
        matches = misfit(gain, offset).1;
    }
    let (after, _) = misfit(fitted.0, fitted.1);
    let plausible = fitted.0.iter().all(|g| (0.8..=1.25).contains(g))
        && fitted.1.iter().all(|o| o.abs() <= 32.0);
    let (gain, offset) = if plausible && after < 0.6 * before {
        fitted
    } else {
        identity
    };
    cells
        .core
        .iter()
        .map(|s| std::array::from_fn(|c| ((s[c] - offset[c]) / gain[c]).clamp(0.0, 255.0)))
        .collect()
}
