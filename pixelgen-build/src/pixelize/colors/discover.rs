//! Finding the palette when none is given: unmixed cells, their colours clustered in OKLab with robust per-channel centres, lone details, and merging and limiting the colours found.

use super::labels::{Blur, deblur, fit_blur};
use super::*;

/// Cells whose core looks like all of their opaque neighbours' (by RGB distance
/// relative to the image's cell-to-cell noise): their colour is unmixed.
pub(super) fn unmixed_cells(cells: &Cells) -> Vec<bool> {
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
pub(super) fn pixel_centre(
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
pub(super) fn robust_centre(histogram: &[u32; 256], count: u32) -> u8 {
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
pub(super) fn cluster_unmixed(raster: &Raster, cells: &Cells, unmixed: &[bool]) -> Vec<Rgb> {
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
pub(super) fn discover(
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
pub(super) fn is_mixture(colors: &[[f32; 3]], color: &[f32; 3], within: f32) -> bool {
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
pub(super) fn drop_unused(colors: &mut Vec<[f32; 3]>, labels: &mut [usize], cells: &Cells) {
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
pub(super) fn pixel_noise(raster: &Raster, cells: &Cells, unmixed: &[bool]) -> f32 {
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
pub(super) fn merge_close(
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
pub(super) fn limit_colors(
    colors: &mut Vec<[f32; 3]>,
    labels: &mut [usize],
    cells: &Cells,
    max: usize,
) {
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
