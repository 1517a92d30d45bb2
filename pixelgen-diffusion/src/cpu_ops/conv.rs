//! 2-D convolution on the CPU as one gemm per tile of output rows, writing straight into
//! the NCHW output with the bias already in place.
//!
//! candle's CPU conv2d copies the whole input to NHWC and repacks the weights on one
//! thread at every call, scatters each patch into its im2col tile element by element, and
//! scatters the gemm's result back into NCHW, then adds the bias as another pass. Here the
//! weights are used as they lie (`[c_out, c_in·kh·kw]` is already the gemm's left matrix),
//! the im2col tile is filled row by row with contiguous copies from the NCHW input (1×1
//! convolutions need none), and gemm writes into the output rows directly, on top of the
//! bias it was given as its starting value.
//!
//! Training: when gradients flow back through the input but the weight and bias are
//! frozen (a LoRA on the attention only), the kernel runs forward too and its backward pass
//! gives the input's gradient alone — for stride 1 as a convolution of the output's gradient
//! with the flipped, transposed kernel on this same kernel. candle's own backward would
//! also compute the frozen kernel's gradient (a convolution with an image-sized kernel,
//! the costliest part of a training step's profile) only to throw it away.
//!
//! Invariants: f32 on the CPU, groups 1 and dilation 1 only ([`conv2d`] runs candle's
//! `Conv2d` otherwise, so CUDA is unchanged, and so does a weight that is being trained);
//! a task owns one (batch item, block of output rows, block of output channels) and runs
//! gemm on one thread, so every output element sums its products in the same order on any
//! number of threads.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::Conv2d;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::{SharedMut, winograd};

/// Output pixels per im2col tile: wide enough for gemm to run at full speed, small
/// enough that the tile (c_in · 9 rows) stays a few MB.
const TILE_PIXELS: usize = 512;
/// Smallest block of output channels a task takes when channels are split for parallelism.
const MIN_CHANNEL_BLOCK: usize = 64;
/// Tasks a convolution is split into at least, where channels allow. A constant, not the
/// thread count: the split decides the shape of each gemm call, which must not depend on
/// the machine's threads.
const MIN_TASKS: usize = 16;

/// `conv.forward(xs)`, through the kernel for f32 CPU tensors.
pub fn conv2d(conv: &Conv2d, xs: &Tensor) -> Result<Tensor> {
    let config = conv.config();
    let mut parameters = vec![conv.weight()];
    parameters.extend(conv.bias());
    // Only the input may carry gradients (the kernel's backward gives the input's alone).
    let frozen = parameters.iter().all(|p| !p.track_op());
    let on_cpu_f32 = std::iter::once(xs)
        .chain(parameters.iter().copied())
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32);
    if !on_cpu_f32 || !frozen || config.groups != 1 || config.dilation != 1 || xs.rank() != 4 {
        return conv.forward(xs);
    }
    let op = Conv {
        padding: config.padding,
        stride: config.stride,
    };
    let training = xs.track_op();
    let xs = xs.contiguous()?;
    let weight = conv.weight().contiguous()?;
    match (conv.bias(), training) {
        (Some(bias), false) => xs.apply_op3_no_bwd(&weight, &bias.contiguous()?, &op),
        (None, false) => xs.apply_op2_no_bwd(&weight, &op),
        (Some(bias), true) => xs.apply_op3(&weight, &bias.contiguous()?, op),
        (None, true) => xs.apply_op2(&weight, op),
    }
}

#[derive(Clone, Copy)]
struct Conv {
    padding: usize,
    stride: usize,
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "pixelgen-conv2d"
    }

    /// The input's gradient only: [`conv2d`] takes this op only for a frozen weight.
    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.input_gradient(xs, weight, grad)?), None))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(xs, xs_layout, weight, weight_layout, None)
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "pixelgen-conv2d-bias"
    }

    /// The input's gradient only: [`conv2d`] takes this op only for a frozen weight and bias.
    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.input_gradient(xs, weight, grad)?), None, None))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = super::contiguous_f32(bias, bias_layout, "conv bias")?;
        self.run(xs, xs_layout, weight, weight_layout, Some(bias))
    }
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    c_in: usize,
    height: usize,
    width: usize,
    k_h: usize,
    k_w: usize,
    out_h: usize,
    out_w: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    /// Rows of the im2col matrix (and columns of the weight matrix).
    fn patch(&self) -> usize {
        self.c_in * self.k_h * self.k_w
    }

    /// A 1×1 stride-1 unpadded convolution reads the input as the gemm's right matrix.
    fn pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == 1 && self.padding == 0
    }
}

impl Conv {
    /// The gradient of the loss with respect to the convolution's input `xs`, given the
    /// gradient `grad` of its output. Stride 1: the full correlation of `grad` with the
    /// kernel flipped in space and with its channel axes swapped, which is a convolution of
    /// padding `k - 1 - p`, on this kernel. Other strides: candle's transposed convolution,
    /// as candle's own backward takes it.
    fn input_gradient(&self, xs: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (_, _, k_h, k_w) = weight.dims4()?;
        let (_, _, in_h, in_w) = xs.dims4()?;
        if self.stride != 1 || k_h != k_w || k_h < self.padding + 1 {
            // The transposed convolution, with the output padding that restores the input's
            // size; candle takes one for both axes, so the larger is used and the other
            // axis cut back (output padding only extends the end; what comes before is the
            // same). candle's own backward uses the height's for both, which fails when the
            // axes need different ones.
            let size = |grad_size: usize| (grad_size - 1) * self.stride + k_h - 2 * self.padding;
            let extra = (in_h.saturating_sub(size(grad.dim(2)?)))
                .max(in_w.saturating_sub(size(grad.dim(3)?)));
            return grad
                .conv_transpose2d(weight, self.padding, extra, self.stride, 1)?
                .narrow(2, 0, in_h)?
                .narrow(3, 0, in_w);
        }
        let flip = |t: &Tensor, dim: usize| -> Result<Tensor> {
            let size = t.dim(dim)?;
            if size == 1 {
                return Ok(t.clone());
            }
            let reversed: Vec<u32> = (0..size as u32).rev().collect();
            t.index_select(&Tensor::new(reversed.as_slice(), t.device())?, dim)
        };
        let turned = flip(&flip(&weight.transpose(0, 1)?.contiguous()?, 2)?, 3)?.contiguous()?;
        let op = Conv {
            padding: k_h - 1 - self.padding,
            stride: 1,
        };
        grad.contiguous()?.apply_op2_no_bwd(&turned, &op)
    }

    fn run(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = super::contiguous_f32(xs, xs_layout, "conv input")?;
        let weight = super::contiguous_f32(weight, weight_layout, "conv weight")?;
        let (batch, c_in, height, width) = xs_layout.shape().dims4()?;
        let (c_out, w_in, k_h, k_w) = weight_layout.shape().dims4()?;
        if w_in != c_in {
            bail!("conv2d: input has {c_in} channels, the weight expects {w_in}");
        }
        if bias.is_some_and(|b| b.len() != c_out) {
            bail!("conv2d: bias does not have {c_out} values");
        }
        if self.stride == 0 || height + 2 * self.padding < k_h || width + 2 * self.padding < k_w {
            bail!(
                "conv2d: a {k_h}×{k_w} kernel (stride {}, padding {}) does not fit a {height}×{width} input",
                self.stride,
                self.padding
            );
        }
        let g = Geometry {
            c_in,
            height,
            width,

            k_h,
            k_w,
            out_h: (height + 2 * self.padding - k_h) / self.stride + 1,
            out_w: (width + 2 * self.padding - k_w) / self.stride + 1,
            stride: self.stride,
            padding: self.padding,
        };
        let pixels = g.out_h * g.out_w;
        let mut out = vec![0f32; batch * c_out * pixels];
        if winograd::applies(k_h, k_w, self.stride, pixels) {
            let shape = winograd::Shape {
                c_in,
                height,
                width,
                c_out,
                padding: self.padding,
            };
            winograd::conv3x3(&shape, batch, xs, weight, bias, &mut out);
            return Ok((
                CpuStorage::F32(out),
                Shape::from_dims(&[batch, c_out, g.out_h, g.out_w]),
            ));
        }
        let rows_per_tile = (TILE_PIXELS / g.out_w).clamp(1, g.out_h);
        let tiles = g.out_h.div_ceil(rows_per_tile);
        // Small images (the UNet's 8×8 level) have too few tiles to feed every thread:
        // split the output channels too.
        let mut channel_block = c_out;
        while batch * tiles * c_out.div_ceil(channel_block) < MIN_TASKS
            && channel_block / 2 >= MIN_CHANNEL_BLOCK
        {
            channel_block = channel_block.div_ceil(2);
        }
        let channel_blocks = c_out.div_ceil(channel_block);
        let tasks = batch * tiles * channel_blocks;
        let dst = SharedMut(out.as_mut_ptr());
        (0..tasks)
            .into_par_iter()
            .for_each_init(Vec::new, |col, task| {
                let block = task % channel_blocks;
                let tile = (task / channel_blocks) % tiles;
                let b = task / (channel_blocks * tiles);
                let first_row = tile * rows_per_tile;
                let rows = rows_per_tile.min(g.out_h - first_row);
                let first_channel = block * channel_block;
                let channels = channel_block.min(c_out - first_channel);
                let input = &xs[b * c_in * height * width..(b + 1) * c_in * height * width];
                // SAFETY: this task writes output channels [first_channel, +channels) of
                // rows [first_row, +rows) of batch item b, which no other task writes; `out`
                // outlives the parallel loop.
                let out = unsafe {
                    dst.get()
                        .add((b * c_out + first_channel) * pixels + first_row * g.out_w)
                };
                let weight =
                    &weight[first_channel * g.patch()..(first_channel + channels) * g.patch()];
                let bias = bias.map(|b| &b[first_channel..first_channel + channels]);
                conv_tile(&g, input, weight, bias, first_row, rows, out, col);
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from_dims(&[batch, c_out, g.out_h, g.out_w]),
        ))
    }
}

/// Output rows [first_row, first_row + rows) for the output channels of `weight`
/// (`channels × patch`), written at `out` (row stride out_h · out_w between channels).
#[allow(clippy::too_many_arguments)]
fn conv_tile(
    g: &Geometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    first_row: usize,
    rows: usize,
    out: *mut f32,
    col: &mut Vec<f32>,
) {
    let n = rows * g.out_w;
    let channel_stride = g.out_h * g.out_w;
    let channels = weight.len() / g.patch();
    let (rhs, rhs_rs): (&[f32], usize) = if g.pointwise() {
        (&input[first_row * g.width..], g.height * g.width)
    } else {
        col.resize(g.patch() * n, 0.0);
        im2col(g, input, first_row, rows, col);
        (col, n)
    };
    if let Some(bias) = bias {
        for (c, &value) in bias.iter().enumerate() {
            // SAFETY: channel c's n output values of this tile (see the caller).
            unsafe { std::slice::from_raw_parts_mut(out.add(c * channel_stride), n) }.fill(value);
        }
    }
    // SAFETY: weight is channels × patch (row-major), rhs holds patch rows of n values at
    // stride rhs_rs, and out has `channels` rows of n values at stride channel_stride.
    unsafe {
        gemm(
            channels,
            n,
            g.patch(),
            out,
            1,
            channel_stride as isize,
            bias.is_some(),
            weight.as_ptr(),
            1,
            g.patch() as isize,
            rhs.as_ptr(),
            1,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Fills `col` (`patch × n`, row-major) with the input values each output pixel of rows
/// [first_row, first_row + rows) sees through each kernel tap; zeros where the tap falls in
/// the padding.
fn im2col(g: &Geometry, input: &[f32], first_row: usize, rows: usize, col: &mut [f32]) {
    let n = rows * g.out_w;
    let mut col_rows = col.chunks_exact_mut(n);
    for channel in input.chunks_exact(g.height * g.width) {
        for ky in 0..g.k_h {
            for kx in 0..g.k_w {
                let Some(dst) = col_rows.next() else { return };
                // Output columns whose tap lands inside the input: ix = ox·s + kx - p
                // in [0, width).
                let first_ox = g.padding.saturating_sub(kx).div_ceil(g.stride);
                let end_ox = (g.width + g.padding)
                    .checked_sub(kx)
                    .map_or(0, |limit| limit.div_ceil(g.stride))
                    .min(g.out_w);
                for (r, dst) in dst.chunks_exact_mut(g.out_w).enumerate() {
                    let iy = (first_row + r) * g.stride + ky;
                    if iy < g.padding || iy - g.padding >= g.height || first_ox >= end_ox {
                        dst.fill(0.0);
                        continue;
                    }
                    let line = &channel[(iy - g.padding) * g.width..(iy - g.padding + 1) * g.width];
                    dst[..first_ox].fill(0.0);
                    dst[end_ox..].fill(0.0);
                    let first_ix = first_ox * g.stride + kx - g.padding;
                    if g.stride == 1 {
                        dst[first_ox..end_ox]
                            .copy_from_slice(&line[first_ix..first_ix + end_ox - first_ox]);
                    } else {
                        for (d, &x) in dst[first_ox..end_ox]
                            .iter_mut()
                            .zip(line[first_ix..].iter().step_by(g.stride))
                        {
                            *d = x;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Module};
    use candle_nn::{Conv2d, Conv2dConfig};

    use super::conv2d;
    use crate::cpu_ops::tests::{assert_close, random, with_threads};

    fn make(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Conv2d {
        let weight = random(&[c_out, c_in, k, k], 31 + k as u64, 0.3);
        let bias = bias.then(|| random(&[c_out], 37, 1.0));
        let config = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Conv2d::new(weight, bias, config)
    }

    /// candle's own conv2d in f64, as an independent reference.
    fn reference(conv: &Conv2d, xs: &candle_core::Tensor) -> candle_core::Tensor {
        let f64 = |t: &candle_core::Tensor| t.to_dtype(DType::F64).unwrap();
        let conv64 = Conv2d::new(f64(conv.weight()), conv.bias().map(f64), *conv.config());
        conv64
            .forward(&f64(xs))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    #[test]
    fn matches_candle_across_shapes() {
        // (batch, c_in, c_out, h, w, kernel, stride, padding, bias)
        let cases = [
            (2, 5, 7, 9, 11, 3, 1, 1, true),
            (1, 3, 4, 8, 8, 3, 2, 1, true),
            (2, 4, 6, 9, 7, 3, 2, 0, false),
            (3, 6, 5, 10, 13, 1, 1, 0, true),
            (1, 4, 3, 5, 6, 1, 2, 0, false),
            (1, 2, 130, 3, 3, 3, 1, 1, true),
            (1, 2, 2, 4, 5, 3, 1, 2, true),
            // Winograd (3×3, stride 1, at least 24×24 outputs): odd sizes (partial tiles),
            // several blocks of tiles, each padding.
            (2, 3, 3, 40, 30, 3, 1, 1, false),
            (2, 5, 7, 27, 31, 3, 1, 1, true),
            (1, 3, 4, 30, 25, 3, 1, 0, false),
            (2, 4, 3, 26, 29, 3, 1, 2, true),
        ];
        for (i, &(batch, c_in, c_out, h, w, k, stride, padding, bias)) in cases.iter().enumerate() {
            let conv = make(c_in, c_out, k, stride, padding, bias);
            let xs = random(&[batch, c_in, h, w], 50 + i as u64, 1.0);
            assert_close(
                &conv2d(&conv, &xs).unwrap(),
                &reference(&conv, &xs),
                1e-5,
                &format!("case {i}"),
            );
        }
    }

    #[test]
    fn non_contiguous_input_is_handled() {
        let conv = make(4, 6, 3, 1, 1, true);
        let xs = random(&[2, 7, 4, 5], 3, 1.0).transpose(1, 2).unwrap();
        assert_close(
            &conv2d(&conv, &xs).unwrap(),
            &reference(&conv, &xs),
            1e-5,
            "transposed",
        );
    }

    #[test]
    fn same_bits_on_any_thread_count() {
        // Winograd, tiled im2col, and 1×1.
        for (k, h, w) in [(3, 37, 29), (3, 9, 7), (1, 9, 7)] {
            let conv = make(8, 200, k, 1, k / 2, true);
            let xs = random(&[2, 8, h, w], 4, 1.0);
            let one = with_threads(1, || conv2d(&conv, &xs).unwrap());
            let many = with_threads(5, || conv2d(&conv, &xs).unwrap());
            assert_eq!(
                one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                many.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn wrong_channels_are_an_error() {
        let conv = make(4, 6, 3, 1, 1, true);
        assert!(conv2d(&conv, &random(&[1, 5, 6, 6], 1, 1.0)).is_err());
    }

    /// Training through a frozen convolution: the kernel's backward gives the gradient
    /// candle's own conv2d gives for the input (3×3 and 1×1, stride 1 and 2, with and
    /// without bias, odd sizes; candle itself fails on strided inputs whose axes leave
    /// different remainders), and no gradient for the frozen weight.
    #[test]
    fn the_input_gradient_is_candles() {
        for (k, stride, padding, bias, size) in [
            (3, 1, 1, true, (9, 7)),
            (1, 1, 0, true, (6, 5)),
            (3, 2, 1, false, (9, 9)),
            (3, 2, 1, true, (8, 6)),
            (3, 1, 1, false, (4, 4)),
        ] {
            let conv = make(5, 7, k, stride, padding, bias);
            let input = random(&[2, 5, size.0, size.1], 3, 1.0);
            let gradient_of = |ours: bool| {
                let xs = candle_core::Var::from_tensor(&input).unwrap();
                let out = if ours {
                    conv2d(&conv, xs.as_tensor()).unwrap()
                } else {
                    conv.forward(xs.as_tensor()).unwrap()
                };
                let weights = random(out.dims(), 5, 1.0);
                let grads = (out * weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(grads.get(conv.weight()).is_none() || !ours);
                grads.get(xs.as_tensor()).unwrap().clone()
            };
            assert_close(
                &gradient_of(true),
                &gradient_of(false),
                1e-5,
                &format!("{k}×{k} stride {stride}, bias {bias}, {size:?}"),
            );
        }
    }
}
