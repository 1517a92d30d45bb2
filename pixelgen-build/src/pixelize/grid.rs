//! Grid recovery: where the raw image's fake pixels are.
//!
//! A diffusion model draws each intended pixel as a blob of roughly `pitch` × `pitch`
//! real pixels, at a non-integer pitch, a sub-pixel phase and slightly different pitches
//! per axis. Each axis is fitted on its own: a candidate grid is scored by the variance
//! left inside its cells (summed over the image), which is lowest when cells sit on
//! the fake pixels, whether their edges are hard or blurred into ramps. The variance of
//! any interval comes from prefix sums of squared differences between pixel columns
//! (rows) at each lag, so a candidate costs O(cells × pitch), not a pass over the image.

use super::raster::{Raster, distance2};

/// Cell boundaries per axis, in pixel-edge coordinates (0 is the image's left or top
/// edge); `columns.len()` is the number of output columns plus one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grid {
    pub columns: Vec<f64>,
    pub rows: Vec<f64>,
}

impl Grid {
    /// Evenly spaced cells over `[start, end)`.
    pub fn uniform(start: f64, end: f64, cells: usize) -> Vec<f64> {
        let step = (end - start) / cells as f64;
        (0..=cells).map(|k| start + step * k as f64).collect()
    }
}

/// The share of the filling grid's cost a window of smaller cells must get below.
/// Soft art (resampled, blurred) lets a lattice at half its pitch get down to about
/// 0.4 (measured on the pixelize benchmark); crisp fake pixels in a margin give under
/// 0.05.
const WINDOW_GAIN: f64 = 0.2;

/// Pitches above this are fitted on a shrunk copy: the fit's cost grows with the pitch,
/// and a coarse grid needs no sub-pixel precision.
const MAX_FIT_PITCH: f64 = 12.0;

/// The fake-pixel grid of `raster` that yields `columns` × `rows` cells.
///
/// The cells cover the frame (the art fills it, as the manifest's size says). Where the
/// fake pixels are smaller than that and the art sits inside a plain margin, a window of
/// fake pixels is placed over the art instead (see `Profile::fit`).
pub(crate) fn fit(raster: &Raster, columns: usize, rows: usize) -> Grid {
    let pitch = (raster.width as f64 / columns as f64).min(raster.height as f64 / rows as f64);
    let factor = ((pitch / MAX_FIT_PITCH).floor() as usize).max(1);
    let shrunk;
    let analysed = if factor > 1 {
        shrunk = raster.shrink(factor);
        &shrunk
    } else {
        raster
    };
    let scale = factor as f64;
    let content = content_box(analysed);
    // The axes are independent: fit them on two threads (the result does not depend
    // on it).
    let (columns_edges, rows_edges) = std::thread::scope(|scope| {
        let x = scope
            .spawn(|| Profile::along_x(analysed, columns, rows).fit(columns, content.map(|c| c.0)));
        let y = Profile::along_y(analysed, columns, rows).fit(rows, content.map(|c| c.1));
        // A panic in the other thread is a bug: surface it as one.
        (x.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), y)
    });
    let mut grid = Grid {
        columns: columns_edges,
        rows: rows_edges,
    };
    for edge in grid.columns.iter_mut().chain(grid.rows.iter_mut()) {
        *edge *= scale;
    }
    // The shrunk copy drops a partial block: the last edge goes back to the frame's.
    if factor > 1 {
        stretch_last(
            &mut grid.columns,
            raster.width as f64,
            analysed.width as f64 * scale,
        );
        stretch_last(
            &mut grid.rows,
            raster.height as f64,
            analysed.height as f64 * scale,
        );
    }
    grid
}

fn stretch_last(edges: &mut [f64], full: f64, analysed: f64) {
    if let Some(last) = edges.last_mut()
        && *last >= analysed - 0.5
    {
        *last += full - analysed;
    }
}

/// Squared differences between pixel lines (columns for the x axis, rows for y) at
/// every lag up to `max_lag`, as prefix sums along the axis.
struct Profile {
    len: usize,
    max_lag: usize,
    /// `prefix[(lag - 1) * (len + 1) + i]`: sum over lines `j < i` of ‖line_j − line_{j−lag}‖².
    prefix: Vec<f64>,
}

impl Profile {
    fn along_x(raster: &Raster, columns: usize, rows: usize) -> Profile {
        let (w, h) = (raster.width, raster.height);
        let max_lag = lag_limit(w, columns);
        // Rows inside one fake pixel repeat each other; two per fake pixel suffice.
        let row_step = ((h as f64 / rows as f64 / 2.0).floor() as usize).max(1);
        let mut lags = vec![0f32; max_lag * w];
        for y in (0..h).step_by(row_step) {
            let line = &raster.rgb[y * w..(y + 1) * w];
            for lag in 1..=max_lag.min(w - 1) {
                let out = &mut lags[(lag - 1) * w..lag * w];
                for x in lag..w {
                    out[x] += distance2(&line[x], &line[x - lag]);
                }
            }
        }
        Profile::from_lags(w, max_lag, &lags)
    }

    fn along_y(raster: &Raster, columns: usize, rows: usize) -> Profile {
        let (w, h) = (raster.width, raster.height);
        let max_lag = lag_limit(h, rows);
        let column_step = ((w as f64 / columns as f64 / 2.0).floor() as usize).max(1);
        let mut lags = vec![0f32; max_lag * h];
        for y in 0..h {
            let line = &raster.rgb[y * w..(y + 1) * w];
            for lag in 1..=max_lag.min(y) {
                let earlier = &raster.rgb[(y - lag) * w..(y - lag + 1) * w];
                let mut sum = 0f32;
                for x in (0..w).step_by(column_step) {
                    sum += distance2(&line[x], &earlier[x]);
                }
                lags[(lag - 1) * h + y] = sum;
            }
        }
        Profile::from_lags(h, max_lag, &lags)
    }

    fn from_lags(len: usize, max_lag: usize, lags: &[f32]) -> Profile {
        let mut prefix = vec![0f64; max_lag * (len + 1)];
        for lag in 0..max_lag {
            let src = &lags[lag * len..(lag + 1) * len];
            let dst = &mut prefix[lag * (len + 1)..(lag + 1) * (len + 1)];
            for i in 0..len {
                dst[i + 1] = dst[i] + f64::from(src[i]);
            }
        }
        Profile {
            len,
            max_lag,
            prefix,
        }
    }

    /// Sum of squared deviations from the mean of the lines whose centres lie in
    /// `[a, b)`: (1/m) × the sum of all pairwise squared distances, m lines.
    fn interval_cost(&self, a: f64, b: f64) -> f64 {
        let from = (a - 0.5).ceil().clamp(0.0, self.len as f64) as usize;
        let to = (b - 0.5).ceil().clamp(0.0, self.len as f64) as usize;
        if to <= from + 1 {
            return 0.0;
        }
        let m = to - from;
        let mut sum = 0.0;
        for lag in 1..m.min(self.max_lag + 1) {
            let row = &self.prefix[(lag - 1) * (self.len + 1)..lag * (self.len + 1)];
            sum += row[to] - row[from + lag];
        }
        sum / m as f64
    }

    /// Cost of `cells` equal cells over `[start, end)`, plus the uncovered margins.
    fn cost(&self, start: f64, end: f64, cells: usize) -> f64 {
        let step = (end - start) / cells as f64;
        let mut total = self.interval_cost(0.0, start) + self.interval_cost(end, self.len as f64);
        for k in 0..cells {
            let a = start + step * k as f64;
            total += self.interval_cost(a, a + step);
        }
        total
    }

    /// The best `cells` equal cells: filling the axis, or, where the art lies inside a
    /// plain margin (`content` is its extent), smaller cells over the art when they
    /// explain the image better.
    fn fit(&self, cells: usize, content: Option<(f64, f64)>) -> Vec<f64> {
        let filling = self.fit_filling(cells);
        let n = self.len as f64;
        let Some((from, to)) = content else {
            return filling;
        };
        let low = ((to - from) / cells as f64).max(1.5);
        let high = n / cells as f64;
        if to - from > 0.8 * n || low >= 0.97 * high {
            return filling;
        }
        let filling_pitch = (filling[cells] - filling[0]) / cells as f64;
        let filling_cost = self.lattice_cost(filling[0], filling_pitch);
        // Search pitch and phase of a lattice over the whole axis; the window is placed
        // on the art afterwards. Coarse steps suffice: only a far better lattice counts.
        let mut best = (f64::INFINITY, 0.0, high);
        let mut pitch_step = (4.0 / cells as f64).max(0.01);
        let mut pitches = (low, high);
        let mut phases: Option<(f64, f64)> = None;
        for _round in 0..3 {
            let mut pitch = pitches.0;
            while pitch <= pitches.1 + 1e-9 {
                let (lo, hi) = phases.unwrap_or((0.0, pitch));
                let phase_step = phases.map_or(1.0, |(a, b)| (b - a) / 6.0);
                let mut phase = lo;
                while phase <= hi + 1e-9 {
                    let cost = self.lattice_cost(phase, pitch);
                    if cost < best.0 {
                        best = (cost, phase, pitch);
                    }
                    phase += phase_step;
                }
                pitch += pitch_step;
            }
            pitches = (best.2 - pitch_step, best.2 + pitch_step);
            phases = Some((best.1 - 1.0, best.1 + 1.0));
            pitch_step /= 5.0;
        }
        let (cost, phase, pitch) = best;
        // Smaller cells always leave less variance inside soft, ramp-like fake pixels,
        // so the smaller lattice must be far better than filling to be believed.
        if cost > WINDOW_GAIN * filling_cost {
            return filling;
        }
        // The window of `cells` lattice cells centred on the art, inside the frame if it fits.
        let span = pitch * cells as f64;
        let ideal = (from + to) / 2.0 - span / 2.0;
        let k = ((ideal - phase) / pitch).round();
        let start = phase + k * pitch;
        Grid::uniform(start, start + span, cells)
    }

    /// Cost of a lattice of pitch `pitch` through `phase`, over the whole axis.
    fn lattice_cost(&self, phase: f64, pitch: f64) -> f64 {
        let n = self.len as f64;
        let first = phase - ((phase / pitch).ceil()) * pitch;
        let mut total = 0.0;
        let mut a = first;
        while a < n {
            total += self.interval_cost(a, a + pitch);
            a += pitch;
        }
        total
    }

    /// The best `cells` equal cells that cover the axis: the first edge within about
    /// half a cell before the start, the last within half a cell after the end.
    fn fit_filling(&self, cells: usize) -> Vec<f64> {
        let n = self.len as f64;
        let pitch = n / cells as f64;
        if pitch < 1.5 {
            // Finer than the image's own pixels can show: nothing to fit.
            return Grid::uniform(0.0, n, cells);
        }
        let reach = 0.6 * pitch;
        // The cost's basins are about a pitch wide: a sixth of one (at most a pixel)
        // cannot step over the right one.
        let mut step = (pitch / 6.0).min(1.0);
        let (mut best_start, mut best_end) = (0.0, n);
        let mut best = self.cost(0.0, n, cells);
        let mut start_range = (-reach, 0.6);
        let mut end_range = (n - 0.6, n + reach);
        for _round in 0..3 {
            let mut start = start_range.0;
            while start <= start_range.1 + 1e-9 {
                let mut end = end_range.0;
                while end <= end_range.1 + 1e-9 {
                    let cost = self.cost(start, end, cells);
                    if cost < best {
                        (best, best_start, best_end) = (cost, start, end);
                    }
                    end += step;
                }
                start += step;
            }
            start_range = (best_start - step, best_start + step);
            end_range = (best_end - step, best_end + step);
            step /= 5.0;
        }
        let (start, end) = self.centre_on_contrast(best_start, best_end, cells);
        Grid::uniform(start, end, cells)
    }

    /// Fine placement near a variance fit: soft (resampled) fake pixels are purest at
    /// their centres, where neighbouring cells' centre lines differ most; crisp ones
    /// are equally pure across a plateau, whose middle is taken. Among placements
    /// within half a cell, those whose centre contrast is within 3 % of the best are
    /// averaged.
    fn centre_on_contrast(&self, start: f64, end: f64, cells: usize) -> (f64, f64) {
        let pitch = (end - start) / cells as f64;
        if pitch < 2.0 {
            return (start, end);
        }
        let reach = pitch / 2.0;
        // About 60 steps across a cell: finer than any cell needs, and bounded cost.
        let step = (pitch / 60.0).max(0.1);
        let steps = (reach / step).floor() as i64;
        let mut scored = Vec::new();
        for a in -steps..=steps {
            for b in -steps..=steps {
                let (s, e) = (start + a as f64 * step, end + b as f64 * step);
                scored.push((self.centre_contrast(s, e, cells), s, e));
            }
        }
        let best = scored.iter().map(|c| c.0).fold(f64::MIN, f64::max);
        if best <= 0.0 {
            return (start, end);
        }
        let near: Vec<&(f64, f64, f64)> = scored.iter().filter(|c| c.0 >= 0.97 * best).collect();
        let n = near.len() as f64;
        (
            near.iter().map(|c| c.1).sum::<f64>() / n,
            near.iter().map(|c| c.2).sum::<f64>() / n,
        )
    }

    /// Sum over neighbouring cells of the squared distance between the lines nearest
    /// their centres.
    fn centre_contrast(&self, start: f64, end: f64, cells: usize) -> f64 {
        let pitch = (end - start) / cells as f64;
        let line = |k: usize| -> Option<usize> {
            let centre = start + (k as f64 + 0.5) * pitch;
            (centre >= 0.0 && centre < self.len as f64).then(|| centre.floor() as usize)
        };
        let mut total = 0.0;
        for k in 0..cells.saturating_sub(1) {
            let (Some(a), Some(b)) = (line(k), line(k + 1)) else {
                continue;
            };
            let lag = b - a;
            if lag == 0 || lag > self.max_lag {
                continue;
            }
            let row = &self.prefix[(lag - 1) * (self.len + 1)..lag * (self.len + 1)];
            total += row[b + 1] - row[b];
        }
        total
    }
}

/// The extent (x, then y, as `[from, to)` in pixels) of whatever differs from the
/// colour of the image's border, when the border is one plain colour; `None` otherwise.
fn content_box(raster: &Raster) -> Option<((f64, f64), (f64, f64))> {
    let (w, h) = (raster.width, raster.height);
    if w < 4 || h < 4 {
        return None;
    }
    let border: Vec<[f32; 3]> = (0..w)
        .flat_map(|x| [x, (h - 1) * w + x])
        .chain((0..h).flat_map(|y| [y * w, y * w + w - 1]))
        .map(|i| raster.rgb[i])
        .collect();
    let mut channel: Vec<f32> = Vec::with_capacity(border.len());
    let background: [f32; 3] = std::array::from_fn(|c| {
        channel.clear();
        channel.extend(border.iter().map(|p| p[c]));
        super::raster::median(&mut channel)
    });
    let mut distances: Vec<f32> = border
        .iter()
        .map(|p| distance2(p, &background).sqrt())
        .collect();
    let spread = super::raster::median(&mut distances);
    // Most of the border must be the plain colour.
    let threshold = (6.0 * spread).max(24.0);
    let plain = distances.iter().filter(|&&d| d <= threshold).count();
    if (plain as f64) < 0.95 * border.len() as f64 {
        return None;
    }
    let (mut columns, mut rows) = (vec![0u32; w], vec![0u32; h]);
    for y in 0..h {
        for x in 0..w {
            if distance2(&raster.rgb[y * w + x], &background) > threshold * threshold {
                columns[x] += 1;
                rows[y] += 1;
            }
        }
    }
    // A line belongs to the art when more than a stray pixel or two of it differ.
    let extent = |counts: &[u32]| -> Option<(f64, f64)> {
        let first = counts.iter().position(|&n| n > 2)?;
        let last = counts.iter().rposition(|&n| n > 2)?;
        Some((first as f64, last as f64 + 1.0))
    };
    Some((extent(&columns)?, extent(&rows)?))
}

/// Lags needed to measure a cell of the expected pitch (with some slack for a larger one).
fn lag_limit(len: usize, cells: usize) -> usize {
    let pitch = len as f64 / cells as f64;
    ((pitch * 1.25).ceil() as usize + 2)
        .min(len.saturating_sub(1))
        .max(1)
}
