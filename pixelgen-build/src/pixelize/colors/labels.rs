//! The mixing model and the relabelling: the blur learnt from the image (how much of each neighbour is in a cell's core), deblurring, and the rounds that give each cell the palette colour that best explains it.

use super::*;

/// How much of each neighbour ends up in a cell's core.
#[derive(Debug, Clone, Copy)]
pub(super) struct Blur {
    pub(super) own: f32,
    pub(super) horizontal: f32,
    pub(super) vertical: f32,
    pub(super) diagonal: f32,
}

impl Blur {
    pub(super) const NONE: Blur = Blur {
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
pub(super) fn neighbour_labels<'a>(
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
pub(super) fn fit_blur(
    cells: &Cells,
    observed: &[[f32; 3]],
    colors: &[[f32; 3]],
    labels: &[usize],
) -> Blur {
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
pub(super) fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<[f64; 3]> {
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
pub(super) fn deblur(
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
pub(super) fn refine(
    cells: &Cells,
    observed: &[[f32; 3]],
    colors: &[[f32; 3]],
    labels: &mut [usize],
) {
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
pub(super) fn smooth(
    cells: &Cells,
    observed: &[[f32; 3]],
    colors: &[[f32; 3]],
    labels: &mut [usize],
) {
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
