//! 3×3 stride-1 convolution by Winograd's F(2×2, 3×3): each 2×2 block of output pixels
//! costs 16 multiplications per (input, output) channel pair instead of 36, so the gemm
//! work of these convolutions — most of a UNet step and nearly all of the VAE decode — is
//! 2.25 times smaller.
//!
//! Per output channel o, input channel i and 4×4 input tile d, with the transforms
//! `U = G g Gᵀ` (weights), `V = Bᵀ d B` (input) and `Y = Aᵀ M A` (output), where
//! `M[ξ] = Σ_i U[ξ][o][i] · V[ξ][i]` for each of the 16 positions ξ of a 4×4 tile: 16 gemms
//! of `[c_out × c_in] · [c_in × tiles]`. The transform matrices hold only 0, ±1 and ½, so
//! the rounding error stays within a few ulps of a direct convolution's.
//!
//! Invariants: used only where [`applies`] (3×3, stride 1, a large enough image); a task
//! owns one (batch item, block of [`TILES`] tiles) and runs its gemms on one thread; the
//! tiling depends only on the shapes, so results do not depend on the thread count.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::SharedMut;

// The transforms follow Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"
// (2015), F(2×2, 3×3).

/// 2×2 output tiles per task (the gemms' width).
const TILES: usize = 96;
/// Smallest output (pixels) that uses Winograd. Below it, the per-call weight transform
/// (16/9 of the weights, read and written once) costs about what it saves.
const MIN_PIXELS: usize = 24 * 24;

/// The shape of a convolution taken by this module.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub padding: usize,
}

impl Shape {
    fn out_h(&self) -> usize {
        self.height + 2 * self.padding - 2
    }
    fn out_w(&self) -> usize {
        self.width + 2 * self.padding - 2
    }
}

/// Whether Winograd pays for a convolution with this kernel and output size.
pub(super) fn applies(k_h: usize, k_w: usize, stride: usize, out_pixels: usize) -> bool {
    k_h == 3 && k_w == 3 && stride == 1 && out_pixels >= MIN_PIXELS
}

/// `U = G g Gᵀ` for every (output, input) channel pair, laid out `[16][c_out][c_in]`.
fn transform_weights(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let plane = c_out * c_in;
    let mut u = vec![0f32; 16 * plane];
    let dst = SharedMut(u.as_mut_ptr());
    weight
        .par_chunks(9 * c_in)
        .enumerate()
        .for_each(|(o, filters)| {
            for (i, g) in filters.chunks_exact(9).enumerate() {
                // G g: 4×3, rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 over g's rows.
                let mut gg = [[0f32; 3]; 4];
                for c in 0..3 {
                    let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
                    gg[0][c] = a;
                    gg[1][c] = (a + b + d) * 0.5;
                    gg[2][c] = (a - b + d) * 0.5;
                    gg[3][c] = d;
                }
                for (r, row) in gg.iter().enumerate() {
                    let (a, b, d) = (row[0], row[1], row[2]);
                    let values = [a, (a + b + d) * 0.5, (a - b + d) * 0.5, d];
                    for (c, &value) in values.iter().enumerate() {
                        // SAFETY: element (ξ = 4r + c, o, i) of u; o is this task's own
                        // output channel, so no other task writes it.
                        unsafe { *dst.get().add((4 * r + c) * plane + o * c_in + i) = value };
                    }
                }
            }
        });
    u
}

/// The convolution of `xs` (`[batch, c_in, height, width]`) with a 3×3 `weight`
/// (`[c_out, c_in, 3, 3]`), stride 1, into `out` (`[batch, c_out, out_h, out_w]`), plus
/// `bias`.
pub(super) fn conv3x3(
    s: &Shape,
    batch: usize,
    xs: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let u = transform_weights(weight, s.c_out, s.c_in);
    let tiles_h = s.out_h().div_ceil(2);
    let tiles_w = s.out_w().div_ceil(2);
    let tiles = tiles_h * tiles_w;
    let blocks = tiles.div_ceil(TILES);
    let dst = SharedMut(out.as_mut_ptr());
    (0..batch * blocks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(v, m), task| {
            let b = task / blocks;
            let first = (task % blocks) * TILES;
            let count = TILES.min(tiles - first);
            let input = &xs[b * s.c_in * s.height * s.width..][..s.c_in * s.height * s.width];
            v.resize(16 * s.c_in * count, 0.0);
            m.resize(16 * s.c_out * count, 0.0);
            transform_input(s, input, tiles_w, first, count, v);
            for xi in 0..16 {
                // SAFETY: u[ξ] is c_out × c_in, v[ξ] is c_in × count and m[ξ] is
                // c_out × count, all row-major and inside their buffers.
                unsafe {
                    gemm(
                        s.c_out,
                        count,
                        s.c_in,
                        m[xi * s.c_out * count..].as_mut_ptr(),
                        1,
                        count as isize,
                        false,
                        u[xi * s.c_out * s.c_in..].as_ptr(),
                        1,
                        s.c_in as isize,
                        v[xi * s.c_in * count..].as_ptr(),
                        1,
                        count as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            // SAFETY: batch item b's output image; the task writes only its own tiles' pixels.
            let out = unsafe { dst.get().add(b * s.c_out * s.out_h() * s.out_w()) };
            transform_output(s, m, bias, tiles_w, first, count, out);
        },
    );
}

/// `V = Bᵀ d B` for the 4×4 input tile d under each of `count` output tiles (from
/// `first`) and each input channel, into `v` laid out `[16][c_in][count]`.
fn transform_input(
    s: &Shape,
    input: &[f32],
    tiles_w: usize,
    first: usize,
    count: usize,
    v: &mut [f32],
) {
    let plane = s.c_in * count;
    for (c, channel) in input.chunks_exact(s.height * s.width).enumerate() {
        for t in 0..count {
            let tile = first + t;
            let (ty, tx) = (tile / tiles_w, tile % tiles_w);
            // The 4×4 input patch, zero outside the image (the padding).
            let mut d = [[0f32; 4]; 4];
            for (r, row) in d.iter_mut().enumerate() {
                let y = (2 * ty + r).wrapping_sub(s.padding);
                if y >= s.height {
                    continue;
                }
                let line = &channel[y * s.width..(y + 1) * s.width];
                for (q, value) in row.iter_mut().enumerate() {
                    let x = (2 * tx + q).wrapping_sub(s.padding);
                    if x < s.width {
                        *value = line[x];
                    }
                }
            }
            // Bᵀ d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3.
            let mut bd = [[0f32; 4]; 4];
            for q in 0..4 {
                bd[0][q] = d[0][q] - d[2][q];
                bd[1][q] = d[1][q] + d[2][q];
                bd[2][q] = d[2][q] - d[1][q];
                bd[3][q] = d[1][q] - d[3][q];
            }
            for (r, row) in bd.iter().enumerate() {
                let values = [
                    row[0] - row[2],
                    row[1] + row[2],
                    row[2] - row[1],
                    row[1] - row[3],
                ];
                for (q, &value) in values.iter().enumerate() {
                    v[(4 * r + q) * plane + c * count + t] = value;
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` (+ bias) for each tile and output channel, written into the output image
/// at `out` (`[c_out, out_h, out_w]`; other tasks write other tiles of it, so it is reached
/// through a pointer, never a shared `&mut`).
fn transform_output(
    s: &Shape,
    m: &[f32],
    bias: Option<&[f32]>,
    tiles_w: usize,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    let plane = s.c_out * count;
    let (out_h, out_w) = (s.out_h(), s.out_w());
    for o in 0..s.c_out {
        let b = bias.map_or(0.0, |b| b[o]);
        for t in 0..count {
            let tile = first + t;
            let (ty, tx) = (tile / tiles_w, tile % tiles_w);
            let at = |xi: usize| m[xi * plane + o * count + t];
            // Aᵀ M: rows m0 + m1 + m2, m1 - m2 - m3.
            let am: [[f32; 4]; 2] = [
                std::array::from_fn(|q| at(q) + at(4 + q) + at(8 + q)),
                std::array::from_fn(|q| at(4 + q) - at(8 + q) - at(12 + q)),
            ];
            for (r, row) in am.iter().enumerate() {
                let y = 2 * ty + r;
                if y >= out_h {
                    continue;
                }
                let values = [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
                for (q, &value) in values.iter().enumerate() {
                    let x = 2 * tx + q;
                    if x < out_w {
                        // SAFETY: pixel (y, x) of channel o, inside the image; it belongs
                        // to tile t, which only this task computes.
                        unsafe { *out.add((o * out_h + y) * out_w + x) = value + b };
                    }
                }
            }
        }
    }
}
