//! One robust colour per grid cell.
//!
//! A cell's core (its central part) is the least mixed with its neighbours, so its
//! per-channel median is the observation; a mean would smear one-pixel details and
//! a single noisy pixel would move it. The whole cell's pixels are kept addressable
//! too: where all neighbours agree the whole cell is unmixed, and its many pixels pin
//! the colour down exactly.

use super::grid::Grid;
use super::raster::{Raster, median};

/// Share of a cell's width (each side of its centre) that counts as its core.
const CORE_HALF_WIDTH: f64 = 0.22;

pub(crate) struct Cells {
    pub columns: usize,
    pub rows: usize,
    /// Per cell, row-major: the core's per-channel median.
    pub core: Vec<[f32; 3]>,
    /// Per cell: the image bilinearly interpolated at the cell's exact centre, the
    /// least mixed single observation (noisier than the core's mean).
    pub centre: Vec<[f32; 3]>,
    /// Per cell: whether most of the core is opaque.
    pub opaque: Vec<bool>,
    /// Per cell, its 8 neighbours: left, right, above, below, then the corners; a
    /// missing (past the edge) or transparent neighbour is the cell itself.
    pub around: Vec<[usize; 8]>,
    /// Per axis, the pixel range `[from, to)` whose centres lie inside each cell.
    column_pixels: Vec<(usize, usize)>,
    row_pixels: Vec<(usize, usize)>,
}

impl Cells {
    /// `wraps`: per axis (x, y), whether the cells past one edge are those at the other
    /// (a seamless tile).
    pub fn sample(raster: &Raster, grid: &Grid, wraps: (bool, bool)) -> Cells {
        let column_core = core_ranges(&grid.columns, raster.width);
        let row_core = core_ranges(&grid.rows, raster.height);
        let (columns, rows) = (column_core.len(), row_core.len());
        let mut core = Vec::with_capacity(columns * rows);
        let mut opaque = Vec::with_capacity(columns * rows);
        let mut scratch: [Vec<f32>; 3] = Default::default();
        for &(y0, y1) in &row_core {
            for &(x0, x1) in &column_core {
                scratch.iter_mut().for_each(Vec::clear);
                let mut transparent = 0usize;
                for y in y0..y1 {
                    for x in x0..x1 {
                        let i = y * raster.width + x;
                        if raster.opaque[i] {
                            for (c, values) in scratch.iter_mut().enumerate() {
                                values.push(raster.rgb[i][c]);
                            }
                        } else {
                            transparent += 1;
                        }
                    }
                }
                opaque.push(scratch[0].len() > transparent);
                core.push(scratch.each_mut().map(|v| median(v)));
            }
        }
        let centre = grid
            .rows
            .windows(2)
            .flat_map(|ry| {
                grid.columns.windows(2).map(move |cx| {
                    interpolate(raster, (cx[0] + cx[1]) / 2.0, (ry[0] + ry[1]) / 2.0)
                })
            })
            .collect();
        let around = (0..columns * rows)
            .map(|i| {
                let (x, y) = ((i % columns) as isize, (i / columns) as isize);
                let at = |dx: isize, dy: isize| {
                    let (mut nx, mut ny) = (x + dx, y + dy);
                    if wraps.0 {
                        nx = nx.rem_euclid(columns as isize);
                    }
                    if wraps.1 {
                        ny = ny.rem_euclid(rows as isize);
                    }
                    let inside =
                        nx >= 0 && ny >= 0 && (nx as usize) < columns && (ny as usize) < rows;
                    let j = if inside {
                        ny as usize * columns + nx as usize
                    } else {
                        i
                    };
                    if opaque[j] { j } else { i }
                };
                [
                    at(-1, 0),
                    at(1, 0),
                    at(0, -1),
                    at(0, 1),
                    at(-1, -1),
                    at(1, -1),
                    at(-1, 1),
                    at(1, 1),
                ]
            })
            .collect();
        Cells {
            columns,
            rows,
            around,
            core,
            centre,
            opaque,
            column_pixels: inside_ranges(&grid.columns, raster.width),
            row_pixels: inside_ranges(&grid.rows, raster.height),
        }
    }

    pub fn len(&self) -> usize {
        self.columns * self.rows
    }

    /// The opaque side neighbours (left, right, above, below) of cell `i`.
    pub fn sides(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.around[i][..4].iter().copied().filter(move |&j| j != i)
    }

    /// Every opaque pixel whose centre lies in cell `i`.
    pub fn pixels<'a>(&self, raster: &'a Raster, i: usize) -> impl Iterator<Item = [f32; 3]> + 'a {
        let (x0, x1) = self.column_pixels[i % self.columns];
        let (y0, y1) = self.row_pixels[i / self.columns];
        (y0..y1).flat_map(move |y| {
            (x0..x1).filter_map(move |x| {
                let p = y * raster.width + x;
                raster.opaque[p].then(|| raster.rgb[p])
            })
        })
    }
}

/// Bilinear interpolation at a point in pixel-edge coordinates, clamped to the image.
fn interpolate(raster: &Raster, x: f64, y: f64) -> [f32; 3] {
    let fx = (x - 0.5).clamp(0.0, (raster.width - 1) as f64);
    let fy = (y - 0.5).clamp(0.0, (raster.height - 1) as f64);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = (
        (x0 + 1).min(raster.width - 1),
        (y0 + 1).min(raster.height - 1),
    );
    let (tx, ty) = ((fx - x0 as f64) as f32, (fy - y0 as f64) as f32);
    let at = |x: usize, y: usize| raster.rgb[y * raster.width + x];
    let (a, b, c, d) = (at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1));
    std::array::from_fn(|k| {
        (a[k] * (1.0 - tx) + b[k] * tx) * (1.0 - ty) + (c[k] * (1.0 - tx) + d[k] * tx) * ty
    })
}

/// Pixel ranges of each cell's core: pixels whose centre is within
/// `CORE_HALF_WIDTH` × width of the cell's centre (at least the nearest pixel).
fn core_ranges(edges: &[f64], size: usize) -> Vec<(usize, usize)> {
    edges
        .windows(2)
        .map(|e| {
            let centre = (e[0] + e[1]) / 2.0;
            let half = (CORE_HALF_WIDTH * (e[1] - e[0])).max(0.5);
            let from = (centre - half - 0.5).ceil().max(0.0) as usize;
            let to = ((centre + half - 0.5).floor() + 1.0).max(0.0) as usize;
            clamp_range(from, to, centre, size)
        })
        .collect()
}

/// Share of a cell's width left out at each side of its "whole cell" pixels: a slightly
/// misplaced edge must not bring in the cell beyond the neighbour.
const INSET: f64 = 0.12;

/// Pixel ranges of whole cells: pixels whose centre lies in `[start, end)`, inset.
fn inside_ranges(edges: &[f64], size: usize) -> Vec<(usize, usize)> {
    edges
        .windows(2)
        .map(|e| {
            let inset = INSET * (e[1] - e[0]);
            let from = (e[0] + inset - 0.5).ceil().max(0.0) as usize;
            let to = (e[1] - inset - 0.5).ceil().max(0.0) as usize;
            clamp_range(from, to, (e[0] + e[1]) / 2.0, size)
        })
        .collect()
}

/// `[from, to)` within `[0, size)`, never empty: at least the pixel nearest `centre`.
fn clamp_range(from: usize, to: usize, centre: f64, size: usize) -> (usize, usize) {
    let (from, to) = (from.min(size), to.min(size));
    if from < to {
        (from, to)
    } else {
        let nearest = (centre.floor().max(0.0) as usize).min(size - 1);
        (nearest, nearest + 1)
    }
}
