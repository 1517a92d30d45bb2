//! Seamless tiling: a convolution that pads circularly on the axes a drawing wraps on.
//!
//! A 3×3 convolution with padding 1 sees zeros beyond the image's edge, so the UNet and
//! the VAE decoder draw borders that do not continue each other. Padding with the
//! opposite edge instead (circular padding) makes every layer see a torus on that axis,
//! and the finished image wraps. This is what A1111's and ComfyUI's "tiling" and
//! InvokeAI's `seamless` node do, and what pixelgen's reference computes in diffusers
//! (every `Conv2d` of the UNet and VAE decoder padding circularly on the named axes).
//!
//! Invariants: the width axis is padded first, then the height axis, each circularly
//! where the tiling wraps and with zeros elsewhere (so with `X` the padded corners are
//! zeros, as two successive `F.pad` calls give them); a convolution without padding, or
//! any convolution when nothing wraps, runs unchanged through [`cpu_ops::conv2d`].

use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};

use super::Tiling;
use super::cpu_ops;

/// `conv.forward(xs)`, padding circularly on the axes `tiling` wraps.
pub fn conv2d(conv: &Conv2d, xs: &Tensor, tiling: Option<Tiling>) -> Result<Tensor> {
    let config = *conv.config();
    let Some(tiling) = tiling.filter(|_| config.padding > 0) else {
        return cpu_ops::conv2d(conv, xs);
    };
    let padding = config.padding;
    let padded = pad(xs, 3, padding, tiling.wraps_x())?;
    let padded = pad(&padded, 2, padding, tiling.wraps_y())?;
    let unpadded = Conv2d::new(
        conv.weight().clone(),
        conv.bias().cloned(),
        Conv2dConfig {
            padding: 0,
            ..config
        },
    );
    cpu_ops::conv2d(&unpadded, &padded)
}

/// Pads `dim` by `by` on both sides: with the opposite edge when `wrap`, else zeros.
fn pad(xs: &Tensor, dim: usize, by: usize, wrap: bool) -> Result<Tensor> {
    if !wrap {
        return xs.pad_with_zeros(dim, by, by);
    }
    let size = xs.dim(dim)?;
    if by > size {
        candle_core::bail!(
            "circular padding of {by} on an axis of {size}: the image is too small to wrap"
        );
    }
    Tensor::cat(
        &[
            xs.narrow(dim, size - by, by)?,
            xs.clone(),
            xs.narrow(dim, 0, by)?,
        ],
        dim,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn conv(padding: usize) -> Conv2d {
        let weight = crate::cpu_ops::tests::random(&[3, 2, 3, 3], 1, 0.5);
        let bias = Tensor::new(&[0.1f32, -0.2, 0.3], &Device::Cpu).unwrap();
        Conv2d::new(
            weight,
            Some(bias),
            Conv2dConfig {
                padding,
                ..Default::default()
            },
        )
    }

    fn roll(xs: &Tensor, dim: usize, by: usize) -> Tensor {
        let size = xs.dim(dim).unwrap();
        Tensor::cat(
            &[
                xs.narrow(dim, size - by, by).unwrap(),
                xs.narrow(dim, 0, size - by).unwrap(),
            ],
            dim,
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// On a torus a convolution commutes with shifting: rolling the input rolls the
    /// output by as much. Zero padding breaks that at the edges; circular padding must not.
    #[test]
    fn a_wrapping_convolution_commutes_with_rolling_the_image() {
        let xs = crate::cpu_ops::tests::random(&[1, 2, 6, 7], 2, 1.0);
        let conv = conv(1);
        let out = conv2d(&conv, &xs, Some(Tiling::XY)).unwrap();
        let rolled_out = conv2d(&conv, &roll(&roll(&xs, 3, 3), 2, 2), Some(Tiling::XY)).unwrap();
        assert!(max_diff(&roll(&roll(&out, 3, 3), 2, 2), &rolled_out) < 1e-5);
        // Without tiling the same check fails: the test can tell the difference.
        let plain = conv2d(&conv, &xs, None).unwrap();
        let rolled_plain = conv2d(&conv, &roll(&roll(&xs, 3, 3), 2, 2), None).unwrap();
        assert!(max_diff(&roll(&roll(&plain, 3, 3), 2, 2), &rolled_plain) > 1e-2);
    }

    #[test]
    fn x_wraps_columns_only_and_leaves_rows_zero_padded() {
        let xs = crate::cpu_ops::tests::random(&[1, 2, 5, 6], 3, 1.0);
        let conv = conv(1);
        let out = conv2d(&conv, &xs, Some(Tiling::X)).unwrap();
        let rolled = conv2d(&conv, &roll(&xs, 3, 2), Some(Tiling::X)).unwrap();
        assert!(max_diff(&roll(&out, 3, 2), &rolled) < 1e-5);
        // The rows are zero-padded as without tiling: the middle columns agree with it.
        let plain = conv2d(&conv, &xs, None).unwrap();
        let middle = |t: &Tensor| t.narrow(3, 1, 4).unwrap();
        assert!(max_diff(&middle(&out), &middle(&plain)) < 1e-5);
        assert_eq!(out.dims(), plain.dims());
        assert_eq!(out.dtype(), DType::F32);
    }

    #[test]
    fn an_unpadded_convolution_is_unchanged() {
        let xs = crate::cpu_ops::tests::random(&[1, 2, 5, 6], 4, 1.0);
        let conv = conv(0);
        let a = conv2d(&conv, &xs, Some(Tiling::XY)).unwrap();
        let b = conv2d(&conv, &xs, None).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
    }
}
