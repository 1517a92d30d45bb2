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

/// How much of each neighbour ends up in a cell's core.
#[derive(Debug, Clone, Copy)]
struct Blur {
    own: f32,
    horizontal: f32,
    vertical: f32,
    diagonal: f32,
}

impl Blur {
    const NONE: Blur = Blur {
        own: 1.0,
        horizontal: 0.0,
        vertical: 0.0,
        diagonal: 0.0,
    };
}

/// Sums of neighbour colours by kind; a missing or transparent neighbour counts as the
/// cell itself (the image edge repeats, and transparent pixels are not sampled).
fn neighbour_sums(cells: &Cells, colors: &[[f32; 3]], labels: &[usize], i: usize) -> [[f32; 3]; 3] {
    let mut sums = [[0f32; 3]; 3];
    for (kind, label) in neighbour_labels(cells, labels, i) {
        for c in 0..3 {
            sums[kind][c] += colors[label][c];
        }
    }
    sums
}

/// The labels of the 8 neighbours of cell `i` with their kind (0 side, 1 above or
/// below, 2 corner); see [`Cells::around`].
fn neighbour_labels<'a>(
    cells: &'a Cells,
    labels: &'a [usize],
    i: usize,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    const KIND: [usize; 8] = [0, 0, 1, 1, 2, 2, 2, 2];
    cells.around[i]
        .iter()
        .zip(KIND)
        .map(move |(&j, kind)| (kind, labels[j]))
}

/// Robust least-squares fit of the blur from the current labels: a few rounds of
/// Huber reweighting, so that mislabelled cells (whose misfit no blur explains) do not
/// inflate it.
fn fit_blur(cells: &Cells, observed: &[[f32; 3]], colors: &[[f32; 3]], labels: &[usize]) -> Blur {
    let rows: Vec<([[f64; 3]; 3], [f64; 3])> = (0..cells.len())
        .filter(|&i| cells.opaque[i])
        .map(|i| {
            let own = colors[labels[i]];
            let sums = neighbour_sums(cells, colors, labels, i);
            let features = std::array::from_fn(|c| {
                [
                    f64::from(sums[0][c] - 2.0 * own[c]),
                    f64::from(sums[1][c] - 2.0 * own[c]),
                    f64::from(sums[2][c] - 4.0 * own[c]),
                ]
            });
            let residual = std::array::from_fn(|c| f64::from(observed[i][c] - own[c]));
            (features, residual)
        })
        .collect();
    let mut fit = [0f64; 3];
    let mut weights = vec![1f64; rows.len()];
    for round in 0..3 {
        let mut a = [[0f64; 3]; 3];
        let mut b = [0f64; 3];
        for ((features, residual), &w) in rows.iter().zip(&weights) {
            for c in 0..3 {
                for r in 0..3 {
                    for s in 0..3 {
                        a[r][s] += w * features[c][r] * features[c][s];
                    }
                    b[r] += w * features[c][r] * residual[c];
                }
            }
        }
        let Some(solved) = solve3(a, b) else {
            return Blur::NONE;
        };
        fit = solved;
        if round == 2 {
            break;
        }
        let misfits: Vec<f64> = rows
            .iter()
            .map(|(features, residual)| {
                (0..3)
                    .map(|c| {
                        let predicted: f64 = (0..3).map(|k| features[c][k] * fit[k]).sum();
                        (residual[c] - predicted).powi(2)
                    })
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        let mut sorted: Vec<f32> = misfits.iter().map(|&m| m as f32).collect();
        let k = 1.5 * f64::from(median(&mut sorted)).max(1.0);
        for (w, m) in weights.iter_mut().zip(&misfits) {
            *w = if *m <= k { 1.0 } else { k / m };
        }
    }
    let [h, v, d] = fit;
    let (mut h, mut v, mut d) = (h.max(0.0) as f32, v.max(0.0) as f32, d.max(0.0) as f32);
    // Keep the cell's own share dominant: beyond that the fit is not a blur.
    let mixed = 2.0 * h + 2.0 * v + 4.0 * d;
    if mixed > 0.6 {
        let s = 0.6 / mixed;
        (h, v, d) = (h * s, v * s, d * s);
    }
    Blur {
        own: 1.0 - 2.0 * h - 2.0 * v - 4.0 * d,
        horizontal: h,
        vertical: v,
        diagonal: d,
    }
}

/// Solves a 3×3 system by Cramer's rule; `None` when it is (nearly) singular.
fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(a);
    let scale = a[0][0].abs() + a[1][1].abs() + a[2][2].abs();
    if scale == 0.0 || d.abs() < 1e-9 * scale * scale * scale {
        return None;
    }
    let mut x = [0f64; 3];
    for (col, out) in x.iter_mut().enumerate() {
        let mut m = a;
        for row in 0..3 {
            m[row][col] = b[row];
        }
        *out = det(m) / d;
    }
    Some(x)
}

/// The cell's own colour once its neighbours' share is taken out.
fn deblur(
    cells: &Cells,
    observed: &[[f32; 3]],
    colors: &[[f32; 3]],
    labels: &[usize],
    blur: Blur,
    i: usize,
) -> [f32; 3] {
    let sums = neighbour_sums(cells, colors, labels, i);
    let mut own = [0f32; 3];
    for c in 0..3 {
        let neighbours =
            blur.horizontal * sums[0][c] + blur.vertical * sums[1][c] + blur.diagonal * sums[2][c];
        own[c] = ((observed[i][c] - neighbours) / blur.own).clamp(0.0, 255.0);
    }
    own
}

/// Relabels every cell with the colour that best explains it (see the module docs).
fn refine(cells: &Cells, observed: &[[f32; 3]], colors: &[[f32; 3]], labels: &mut [usize]) {
    let labs = labs_of(colors);
    // Fitted once, from the labels as they come: refitting after each round lets
    // overcorrected labels claim ever more blur.
    let blur = fit_blur(cells, observed, colors, labels);
    // Only cells next to a change can change in the next round.
    let mut dirty = vec![true; cells.len()];
    for _ in 0..ROUNDS {
        let mut next = vec![false; cells.len()];
        let mut changed = false;
        for i in (0..cells.len()).filter(|&i| cells.opaque[i] && dirty[i]) {
            let own = deblur(cells, observed, colors, labels, blur, i);
            let label = nearest(&labs, own);
            if label != labels[i] {
                labels[i] = label;
                changed = true;
                next[i] = true;
                for &j in &cells.around[i] {
                    next[j] = true;
                }
            }
        }
        if !changed {
            break;
        }
        dirty = next;
    }
}

/// Weight of a differing side (above, below, left, right) neighbour in [`smooth`]; a
/// differing corner counts half.
const SMOOTHNESS: f32 = 1.0;

/// Relabels with a preference for agreeing with the neighbours (a Potts prior): a cell
/// whose deblurred colour sits between two close colours joins its neighbours, while a
/// cell far from its neighbours' colour (a one-pixel detail) keeps its own. The data
/// term is the squared RGB distance over twice the noise variance, the noise measured
/// from the cells' own misfits. RGB here, unlike the OKLab of the labelling: this pass
/// weighs evidence against noise, and the noise is added in RGB.
fn smooth(cells: &Cells, observed: &[[f32; 3]], colors: &[[f32; 3]], labels: &mut [usize]) {
    let blur = fit_blur(cells, observed, colors, labels);
    let mut misfits: Vec<f32> = (0..cells.len())
        .filter(|&i| cells.opaque[i])
        .map(|i| {
            distance2(
                &deblur(cells, observed, colors, labels, blur, i),
                &colors[labels[i]],
            )
            .sqrt()
        })
        .collect();
    // The median of a 3-D Gaussian distance is about 1.54 σ.
    let sigma = (median(&mut misfits) / 1.54).max(0.5);
    let scale = 1.0 / (2.0 * sigma * sigma);
    const WEIGHTS: [f32; 8] = [
        SMOOTHNESS,
        SMOOTHNESS,
        SMOOTHNESS,
        SMOOTHNESS,
        SMOOTHNESS / 2.0,
        SMOOTHNESS / 2.0,
        SMOOTHNESS / 2.0,
        SMOOTHNESS / 2.0,
    ];
    // Only cells next to a change can change in the next round.
    let mut dirty = vec![true; cells.len()];
    for _ in 0..ROUNDS {
        let mut next = vec![false; cells.len()];
        let mut changed = false;
        for i in (0..cells.len()).filter(|&i| cells.opaque[i] && dirty[i]) {
            let own = deblur(cells, observed, colors, labels, blur, i);
            let around = cells.around[i];
            let cost = |k: usize| -> f32 {
                let disagreement: f32 = around
                    .iter()
                    .zip(WEIGHTS)
                    .filter(|&(&j, _)| j != i && labels[j] != k)
                    .map(|(_, w)| w)
                    .sum();
                distance2(&own, &colors[k]) * scale + disagreement
            };
            // Only the neighbours' labels and the best fit can win.
            let nearest = (0..colors.len())
                .min_by(|&a, &b| {
                    distance2(&own, &colors[a]).total_cmp(&distance2(&own, &colors[b]))
                })
                .unwrap_or(labels[i]);
            let best = around
                .iter()
                .map(|&j| labels[j])
                .chain([labels[i], nearest])
                .min_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(a.cmp(&b)))
                .unwrap_or(labels[i]);
            if best != labels[i] {
                labels[i] = best;
                changed = true;
                next[i] = true;
                for &j in &around {
                    next[j] = true;
                }
            }
        }
        if !changed {
            break;
        }
        dirty = next;
    }
}

/// Index of the colour in `labs` nearest to `color` (RGB floats) in OKLab.
fn nearest(labs: &[Lab], color: [f32; 3]) -> usize {
    crate::color::nearest(labs, &oklab(color))
}

/// Cells whose core looks like all of their opaque neighbours' (by RGB distance
/// relative to the image's cell-to-cell noise): their colour is unmixed.
fn unmixed_cells(cells: &Cells) -> Vec<bool> {
    let mut nearest_neighbour: Vec<f32> = (0..cells.len())
        .filter(|&i| cells.opaque[i])
        .filter_map(|i| {
            cells
                .sides(i)
                .map(|j| distance2(&cells.core[i], &cells.core[j]).sqrt())
                .min_by(f32::total_cmp)
        })
        .collect();
    let noise = median(&mut nearest_neighbour);
    let tolerance = (3.0 * noise).max(1.5);
    (0..cells.len())
        .map(|i| {
            // `around` counts a missing or transparent neighbour as the cell itself.
            cells.opaque[i]
                && cells.around[i]
                    .iter()
                    .all(|&j| distance2(&cells.core[i], &cells.core[j]).sqrt() <= tolerance)
        })
        .collect()
}

/// Per-channel [`robust_centre`] of the pixels of `members` (integer histograms).
fn pixel_centre(
    raster: &Raster,
    cells: &Cells,
    members: impl Iterator<Item = usize>,
) -> Option<Rgb> {
    let mut histograms = [[0u32; 256]; 3];
    let mut count = 0u32;
    for i in members {
        for pixel in cells.pixels(raster, i) {
            for c in 0..3 {
                histograms[c][pixel[c] as usize] += 1;
            }
            count += 1;
        }
    }
    if count == 0 {
        return None;
    }
    Some(histograms.map(|h| robust_centre(&h, count)))
}

/// The centre of one channel's histogram: the mean of the values within three robust
/// standard deviations of the median (the mean is less noisy than the median, and
/// the window drops outliers); the window shrinks to stay clear of 0 and 255.
fn robust_centre(histogram: &[u32; 256], count: u32) -> u8 {
    let quantile = |q: f64| -> usize {
        let mut seen = 0u64;
        for (value, &n) in histogram.iter().enumerate() {
            seen += u64::from(n);
            if seen as f64 >= q * f64::from(count) {
                return value;
            }
        }
        255
    };
    let median = quantile(0.5);
    let mut deviations = [0u32; 256];
    for (value, &n) in histogram.iter().enumerate() {
        deviations[value.abs_diff(median)] += n;
    }
    let mut seen = 0;
    let mad = deviations
        .iter()
        .position(|&n| {
            seen += n;
            2 * seen >= count
        })
        .unwrap_or(0);
    // Symmetric about the median and clear of the clipped ends (a clipped end piles
    // up values that belong further out).
    let window = ((3.0 * 1.4826 * mad as f64).max(1.0).ceil() as usize)
        .min(median.saturating_sub(1))
        .min(254usize.saturating_sub(median));
    if window == 0 {
        return median as u8;
    }
    let (mut sum, mut n) = (0f64, 0f64);
    for value in median - window..=median + window {
        sum += value as f64 * f64::from(histogram[value]);
        n += f64::from(histogram[value]);
    }
    (sum / n).round() as u8
}

/// The palette of an image without one: clusters of unmixed cells (see module docs).
fn cluster_unmixed(raster: &Raster, cells: &Cells, unmixed: &[bool]) -> Vec<Rgb> {
    let mut members: Vec<usize> = (0..cells.len()).filter(|&i| unmixed[i]).collect();
    if members.is_empty() {
        // No flat area anywhere (a tiny or fully dithered image): every opaque cell votes.
        members = (0..cells.len()).filter(|&i| cells.opaque[i]).collect();
    }
    // Each unmixed cell's colour from all of its pixels: far less noisy than its core.
    let points: Vec<(usize, [f32; 3])> = members
        .iter()
        .filter_map(|&i| {
            let mut channels: [Vec<f32>; 3] = Default::default();
            for p in cells.pixels(raster, i) {
                for c in 0..3 {
                    channels[c].push(p[c]);
                }
            }
            (!channels[0].is_empty()).then(|| {
                let rgb = channels.each_mut().map(|v| median(v));
                (i, oklab(rgb))
            })
        })
        .collect();
    let radius = cluster_radius(cells, &points);

    // Mode seeking on a fine histogram of OKLab: the densest colour becomes a cluster,
    // its members leave, and so on; far fewer bins than cells.
    let bin = radius / 3.0;
    let mut bins: HashMap<[i32; 3], (usize, [f32; 3], Vec<usize>)> = HashMap::new();
    for &(i, lab) in &points {
        let key = lab.map(|v| (v / bin).floor() as i32);
        let entry = bins.entry(key).or_insert((0, [0.0; 3], Vec::new()));
        entry.0 += 1;
        for c in 0..3 {
            entry.1[c] += lab[c];
        }
        entry.2.push(i);
    }
    let mut bins: Vec<(usize, [f32; 3], Vec<usize>)> = bins
        .into_values()
        .map(|(n, sum, cells)| (n, sum.map(|s| s / n as f32), cells))
        .collect();
    // HashMap order is random; the result must not be.
    bins.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));

    // A coarse grid of side `radius` finds the bins near a point in 27 lookups.
    let coarse_key = |lab: &[f32; 3]| lab.map(|v| (v / radius).floor() as i32);
    let mut coarse: HashMap<[i32; 3], Vec<usize>> = HashMap::new();
    for (k, b) in bins.iter().enumerate() {
        coarse.entry(coarse_key(&b.1)).or_default().push(k);
    }
    let near = |centre: &[f32; 3]| -> Vec<usize> {
        let key = coarse_key(centre);
        let mut found = Vec::new();
        for dz in -1..=1 {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    if let Some(list) = coarse.get(&[key[0] + dx, key[1] + dy, key[2] + dz]) {
                        found.extend(list.iter().copied());
                    }
                }
            }
        }
        found
    };
    let r2 = radius * radius;
    let within = |bins: &[(usize, [f32; 3], Vec<usize>)], centre: &[f32; 3]| -> Vec<usize> {
        near(centre)
            .into_iter()
            .filter(|&k| bins[k].0 > 0 && distance2(&bins[k].1, centre) <= r2)
            .collect()
    };
    let mut support: Vec<usize> = (0..bins.len())
        .map(|k| within(&bins, &bins[k].1).iter().map(|&j| bins[j].0).sum())
        .collect();
    let mut clusters: Vec<(usize, [f32; 3], Vec<usize>)> = Vec::new();
    while let Some(seed) = (0..bins.len())
        .filter(|&k| bins[k].0 > 0)
        .max_by_key(|&k| (support[k], std::cmp::Reverse(k)))
    {
        // Colours with fewer unmixed cells are left to `discover`.
        if support[seed] < MIN_SUPPORT {
            break;
        }
        // Two mean-shift steps centre the cluster on its mode.
        let mut centre = bins[seed].1;
        for _ in 0..2 {
            let (mut n, mut sum) = (0usize, [0f32; 3]);
            for k in within(&bins, &centre) {
                n += bins[k].0;
                for c in 0..3 {
                    sum[c] += bins[k].1[c] * bins[k].0 as f32;
                }
            }
            if n > 0 {
                centre = sum.map(|s| s / n as f32);
            }
        }
        let mut taken_bins = within(&bins, &centre);
        if taken_bins.is_empty() {
            // The mode drifted off every bin: take the seed itself.
            taken_bins.push(seed);
        }
        let mut taken = Vec::new();
        let mut count = 0;
        for &k in &taken_bins {
            let removed = bins[k].0;
            count += removed;
            bins[k].0 = 0;
            taken.append(&mut bins[k].2);
            for j in near(&bins[k].1) {
                if distance2(&bins[j].1, &bins[k].1) <= r2 {
                    support[j] = support[j].saturating_sub(removed);
                }
            }
        }
        clusters.push((count, centre, taken));
    }

    // Noise tails of a big cluster form small clusters next to it: fold them back.
    let mut k = clusters.len();
    while k > 0 {
        k -= 1;
        let small = clusters[k].0;
        let host = (0..k).find(|&j| {
            clusters[j].0 >= 10 * small && distance2(&clusters[j].1, &clusters[k].1) <= 4.0 * r2
        });
        if let Some(j) = host {
            let (_, _, mut cells_k) = clusters.remove(k);
            clusters[j].0 += small;
            clusters[j].2.append(&mut cells_k);
        }
    }
    clusters
        .iter()
        .filter_map(|(_, _, members)| pixel_centre(raster, cells, members.iter().copied()))
        .collect()
}

/// Cluster radius in OKLab from the noise between neighbouring unmixed cells.
fn cluster_radius(cells: &Cells, points: &[(usize, [f32; 3])]) -> f32 {
    let lab_of: HashMap<usize, [f32; 3]> = points.iter().copied().collect();
    let mut gaps: Vec<f32> = points
        .iter()
        .filter_map(|(i, lab)| {
            cells
                .sides(*i)
                .filter_map(|j| lab_of.get(&j))
                .map(|other| distance2(lab, other).sqrt())
                .min_by(f32::total_cmp)
        })
        .collect();
    (2.5 * median(&mut gaps)).clamp(0.004, 0.04)
}

/// New colours for cells that no colour explains once deblurred: a shade used only in
/// thin lines, a one-pixel highlight. Cells far (relative to the image's noise) from
/// their label that agree with each other share a new colour; a lone cell needs to be
/// very far. Returns whether any colour was added.
fn discover(
    cells: &Cells,
    observed: &[[f32; 3]],
    colors: &mut Vec<[f32; 3]>,
    labels: &mut [usize],
    deblurred: bool,
) -> bool {
    let blur = if deblurred {
        fit_blur(cells, observed, colors, labels)
    } else {
        Blur::NONE
    };
    let mut misfits = Vec::new();
    let mut distances = Vec::new();
    for i in (0..cells.len()).filter(|&i| cells.opaque[i]) {
        let own = deblur(cells, observed, colors, labels, blur, i);
        let d = distance2(&own, &colors[labels[i]]).sqrt();
        distances.push(d);
        misfits.push((i, own, d));
    }
    let scale = median(&mut distances).max(1.0);
    let far = (3.0 * scale).max(6.0);
    let alone = (8.0 * scale).max(UNEXPLAINED_RGB);
    let mut groups: Vec<(Vec<usize>, [f32; 3], f32)> = Vec::new();
    for (i, own, d) in misfits.into_iter().filter(|m| m.2 > far) {
        let near = groups
            .iter_mut()
            .find(|(_, mean, _)| distance2(mean, &own).sqrt() <= far);
        match near {
            Some((members, mean, worst)) => {
                let n = members.len() as f32;
                for c in 0..3 {
                    mean[c] = (mean[c] * n + own[c]) / (n + 1.0);
                }
                *worst = worst.max(d);
                members.push(i);
            }
            None => groups.push((vec![i], own, d)),
        }
    }
    let mut added = false;
    for (members, mean, worst) in groups {
        if members.len() < 3 && worst <= alone {
            continue;
        }
        // Close to a colour already there: noise around it, not a colour of its own.
        if colors.iter().any(|c| distance2(c, &mean).sqrt() <= far) {
            continue;
        }
        // Without deblurring, a cell between two colours looks like a new colour: a
        // group that is a mix of two known colours is not one.
        if !deblurred && is_mixture(colors, &mean, far) {
            continue;
        }
        colors.push(mean);
        for i in members {
            labels[i] = colors.len() - 1;
        }
        added = true;
    }
    added
}

/// Whether `color` lies within `within` of the segment between two of `colors`
/// (away from their ends).
fn is_mixture(colors: &[[f32; 3]], color: &[f32; 3], within: f32) -> bool {
    colors.iter().enumerate().any(|(k, a)| {
        colors[k + 1..].iter().any(|b| {
            let ab: [f32; 3] = std::array::from_fn(|c| b[c] - a[c]);
            let length2 = ab.iter().map(|v| v * v).sum::<f32>();
            if length2 == 0.0 {
                return false;
            }
            let t =
                ((0..3).map(|c| (color[c] - a[c]) * ab[c]).sum::<f32>() / length2).clamp(0.1, 0.9);
            let point: [f32; 3] = std::array::from_fn(|c| a[c] + t * ab[c]);
            distance2(&point, color).sqrt() <= within
        })
    })
}

/// Removes colours no cell uses.
fn drop_unused(colors: &mut Vec<[f32; 3]>, labels: &mut [usize], cells: &Cells) {
    let mut used = vec![false; colors.len()];
    for i in (0..cells.len()).filter(|&i| cells.opaque[i]) {
        used[labels[i]] = true;
    }
    let mut remap = vec![0; colors.len()];
    let mut kept = Vec::new();
    for (k, color) in colors.iter().enumerate() {
        if used[k] {
            remap[k] = kept.len();
            kept.push(*color);
        }
    }
    for label in labels.iter_mut() {
        *label = remap[*label];
    }
    *colors = kept;
}

/// The pixel noise (a robust standard deviation, RGB units) inside unmixed cells.
fn pixel_noise(raster: &Raster, cells: &Cells, unmixed: &[bool]) -> f32 {
    let mut deviations = Vec::new();
    let mut channel: Vec<f32> = Vec::new();
    // A few hundred cells measure the noise as well as all of them.
    let unmixed: Vec<usize> = (0..cells.len()).filter(|&i| unmixed[i]).collect();
    let stride = (unmixed.len() / 400).max(1);
    for &i in unmixed.iter().step_by(stride) {
        for c in 0..3 {
            channel.clear();
            channel.extend(cells.pixels(raster, i).map(|p| p[c]));
            let centre = median(&mut channel);
            deviations.extend(channel.iter().map(|v| (v - centre).abs()));
        }
    }
    1.4826 * median(&mut deviations)
}

/// Merges the closest pair of colours (the rarer into the commoner, weighted) while
/// they are within `within` (RGB). Returns whether anything merged.
fn merge_close(
    colors: &mut Vec<[f32; 3]>,
    labels: &mut [usize],
    cells: &Cells,
    within: f32,
) -> bool {
    let mut merged = false;
    loop {
        let mut counts = vec![0usize; colors.len()];
        for i in (0..cells.len()).filter(|&i| cells.opaque[i]) {
            counts[labels[i]] += 1;
        }
        let mut closest: Option<(f32, usize, usize)> = None;
        for a in 0..colors.len() {
            for b in a + 1..colors.len() {
                let d = distance2(&colors[a], &colors[b]).sqrt();
                if d <= within && closest.is_none_or(|(best, _, _)| d < best) {
                    closest = Some((d, a, b));
                }
            }
        }
        let Some((_, a, b)) = closest else {
            return merged;
        };
        let (keep, gone) = if counts[a] >= counts[b] {
            (a, b)
        } else {
            (b, a)
        };
        let (wk, wg) = (counts[keep] as f32, counts[gone] as f32);
        if wk + wg > 0.0 {
            colors[keep] =
                std::array::from_fn(|c| (colors[keep][c] * wk + colors[gone][c] * wg) / (wk + wg));
        }
        for label in labels.iter_mut().filter(|l| **l == gone) {
            *label = keep;
        }
        counts[gone] = 0;
        drop_unused(colors, labels, cells);
        merged = true;
    }
}

/// Merges the least-used colour into its nearest until at most `max` remain.
fn limit_colors(colors: &mut Vec<[f32; 3]>, labels: &mut [usize], cells: &Cells, max: usize) {
    while colors.len() > max {
        let mut counts = vec![0usize; colors.len()];
        for i in (0..cells.len()).filter(|&i| cells.opaque[i]) {
            counts[labels[i]] += 1;
        }
        let rarest = (0..colors.len())
            .min_by_key(|&k| (counts[k], k))
            .unwrap_or(0);
        let labs = labs_of(colors);
        let target = (0..colors.len())
            .filter(|&k| k != rarest)
            .min_by(|&a, &b| {
                distance2(&labs[a], &labs[rarest]).total_cmp(&distance2(&labs[b], &labs[rarest]))
            })
            .unwrap_or(0);
        for label in labels.iter_mut().filter(|l| **l == rarest) {
            *label = target;
        }
        drop_unused(colors, labels, cells);
    }
}

/// A fitted blur leaving a cell at least this much of its own colour is no blur.
const CRISP: f32 = 0.97;

/// Unmixed pixels needed before a colour is their median rather than the fit.
const EXACT_PIXELS: usize = 60;

/// The final colours. Where a colour has enough unmixed pixels (cells whose neighbours
/// all carry its label), their per-channel median, which is exact under noise; otherwise
/// the least-squares colour that, blurred with its neighbours, best reproduces the
/// cores of all of its cells.
fn settle_exact(raster: &Raster, cells: &Cells, colors: &[[f32; 3]], labels: &[usize]) -> Vec<Rgb> {
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
fn solve(mut a: Vec<f64>, mut b: Vec<[f64; 3]>, k: usize) -> Option<Vec<[f64; 3]>> {
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
fn correct_cast(cells: &Cells, palette: &[Rgb]) -> Vec<[f32; 3]> {
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

/// The solvers on their own; the stage as a whole is tested in `pixelize/tests.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve3_recovers_a_known_solution_and_refuses_singular_systems() {
        let a = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
        let x = [0.25, -1.5, 3.0];
        let b: [f64; 3] = std::array::from_fn(|r| (0..3).map(|c| a[r][c] * x[c]).sum());
        let got = solve3(a, b).unwrap();
        for c in 0..3 {
            assert!((got[c] - x[c]).abs() < 1e-12, "{got:?}");
        }
        // Two equal rows: singular.
        assert_eq!(
            solve3([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 1.0]], b),
            None
        );
        assert_eq!(solve3([[0.0; 3]; 3], b), None);
    }

    #[test]
    fn solve_handles_pivoting_and_three_right_hand_sides() {
        // A zero on the diagonal needs a row swap.
        let k = 3;
        let a = vec![0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 1.0];
        let x = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [2.0, -2.0, 1.0]];
        let b: Vec<[f64; 3]> = (0..k)
            .map(|r| std::array::from_fn(|c| (0..k).map(|j| a[r * k + j] * x[j][c]).sum()))
            .collect();
        let got = solve(a, b, k).unwrap();
        for r in 0..k {
            for c in 0..3 {
                assert!((got[r][c] - x[r][c]).abs() < 1e-12, "{got:?}");
            }
        }
        assert_eq!(solve(vec![1.0, 2.0, 2.0, 4.0], vec![[1.0; 3]; 2], 2), None);
    }

    #[test]
    fn robust_centre_ignores_outliers_and_clipped_ends() {
        let mut histogram = [0u32; 256];
        for (value, n) in [(99, 10), (100, 30), (101, 10)] {
            histogram[value] = n;
        }
        // A few far outliers do not pull the centre.
        histogram[250] = 3;
        histogram[3] = 3;
        assert_eq!(robust_centre(&histogram, 56), 100);
        // Values piled up at the clipped end: the median itself.
        let mut clipped = [0u32; 256];
        clipped[255] = 20;
        clipped[254] = 5;
        assert_eq!(robust_centre(&clipped, 25), 255);
    }

    #[test]
    fn a_colour_between_two_others_is_a_mixture_and_one_off_the_segment_is_not() {
        let colors = [[0.0, 0.0, 0.0], [200.0, 100.0, 0.0]];
        assert!(is_mixture(&colors, &[100.0, 50.0, 0.0], 5.0));
        assert!(is_mixture(&colors, &[101.0, 52.0, 3.0], 5.0));
        assert!(!is_mixture(&colors, &[100.0, 50.0, 40.0], 5.0));
        // Near an end is that colour, not a mixture.
        assert!(!is_mixture(&colors, &[2.0, 1.0, 0.0], 0.5));
    }

    #[test]
    fn nearest_picks_the_closest_colour_in_oklab() {
        let colors = [[0.0, 0.0, 128.0], [100.0, 100.0, 255.0]];
        assert_eq!(nearest(&labs_of(&colors), [60.0, 60.0, 255.0]), 1);
        assert_eq!(nearest_all(&[[0.0, 0.0, 120.0]], &colors), [0]);
    }
}
