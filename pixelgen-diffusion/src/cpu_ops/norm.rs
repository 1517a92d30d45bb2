//! GroupNorm, optionally fused with the SiLU that follows it in every resnet, as one
//! multi-threaded pass over the data on the CPU.
//!
//! candle_nn's GroupNorm is a chain of about ten whole-tensor operations (sum, subtract,
//! square, sum, divide, two broadcasts, a reshape, then SiLU as its own pass), each on one
//! thread; at 64×64 latents and 512×512 VAE images that chain was a visible share of a step.
//!
//! Invariants: the kernel runs only for contiguous f32 tensors on the CPU
//! ([`GroupNorm::forward`] falls back to candle_nn's composition elsewhere, so CUDA computes
//! what it did before). One task normalises one (batch item, group): its statistics are
//! summed in a fixed order, so results do not depend on the number of threads.

use candle_core::{CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::vmath::{self, dispatch};

/// diffusers' `GroupNorm` (weight and bias per channel), with [`GroupNorm::forward_silu`]
/// for the norm-then-SiLU pairs.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    reference: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Reads `weight` and `bias` as `candle_nn::group_norm` does (same names, same
    /// defaults when a `VarMap` creates them).
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        Self::from_tensors(weight, bias, groups, eps)
    }

    pub fn from_tensors(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.dims1()?;
        if groups == 0 || !channels.is_multiple_of(groups) {
            bail!("group norm: {channels} channels cannot be split into {groups} groups");
        }
        Ok(Self {
            reference: candle_nn::GroupNorm::new(
                weight.clone(),
                bias.clone(),
                channels,
                groups,
                eps,
            )?,
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        if self.uses_kernel(xs) {
            self.kernel(xs, true)
        } else {
            candle_nn::ops::silu(&self.reference.forward(xs)?)
        }
    }

    fn uses_kernel(&self, xs: &Tensor) -> bool {
        super::on_cpu_f32(&[xs, &self.weight, &self.bias]) && xs.rank() >= 3
    }

    fn kernel(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let op = GroupNormOp {
            groups: self.groups,
            eps: self.eps as f32,
            silu,
        };
        xs.contiguous()?
            .apply_op3_no_bwd(&self.weight, &self.bias, &op)
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.uses_kernel(xs) {
            self.kernel(xs, false)
        } else {
            self.reference.forward(xs)
        }
    }
}

struct GroupNormOp {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "pixelgen-group-norm"
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
        let xs = super::contiguous_f32(xs, xs_layout, "group norm input")?;
        let weight = super::contiguous_f32(weight, weight_layout, "group norm weight")?;
        let bias = super::contiguous_f32(bias, bias_layout, "group norm bias")?;
        let dims = xs_layout.dims();
        let channels = dims[1];
        if weight.len() != channels || bias.len() != channels {
            bail!(
                "group norm: {channels} channels, but {} weights and {} biases",
                weight.len(),
                bias.len()
            );
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let group_len = per_group * spatial;
        let mut out = vec![0f32; xs.len()];
        if group_len > 0 {
            out.par_chunks_mut(group_len)
                .zip(xs.par_chunks(group_len))
                .enumerate()
                .for_each(|(i, (out, xs))| {
                    let first_channel = (i % self.groups) * per_group;
                    let weight = &weight[first_channel..first_channel + per_group];
                    let bias = &bias[first_channel..first_channel + per_group];
                    normalize_group(out, xs, weight, bias, spatial, self.eps, self.silu);
                });
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(dims)))
    }
}

dispatch! {
    /// Normalises one group: `xs` is `weight.len()` channels of `spatial` values each.
    fn normalize_group(
        out: &mut [f32],
        xs: &[f32],
        weight: &[f32],
        bias: &[f32],
        spatial: usize,
        eps: f32,
        silu: bool,
    ) {
        // Two passes (mean, then squared deviations), as candle_nn computes it: no
        // cancellation when the mean is large against the spread.
        let n = xs.len() as f32;
        let mean = vmath::sum(xs) / n;
        let variance = vmath::sum_squared_deviations(xs, mean) / n;
        let inv_std = 1.0 / (variance + eps).sqrt();
        for ((out, xs), (&w, &b)) in out
            .chunks_exact_mut(spatial)
            .zip(xs.chunks_exact(spatial))
            .zip(weight.iter().zip(bias))
        {
            let scale = inv_std * w;
            if silu {
                for (o, &x) in out.iter_mut().zip(xs) {
                    *o = vmath::silu((x - mean) * scale + b);
                }
            } else {
                for (o, &x) in out.iter_mut().zip(xs) {
                    *o = (x - mean) * scale + b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Module;

    use super::GroupNorm;
    use crate::cpu_ops::tests::{assert_close, random, with_threads};

    fn norm(channels: usize, groups: usize, seed: u64) -> GroupNorm {
        let weight = random(&[channels], seed, 1.0).affine(1.0, 1.0).unwrap();
        let bias = random(&[channels], seed + 1, 0.5);
        GroupNorm::from_tensors(weight, bias, groups, 1e-5).unwrap()
    }

    #[test]
    fn matches_candle_composition() {
        for (dims, groups) in [
            (vec![2, 32, 7, 5], 8),
            (vec![3, 12, 9, 11], 4),
            (vec![1, 64, 16, 16], 32),
            (vec![2, 6, 13], 3),
        ] {
            let gn = norm(dims[1], groups, 7);
            // An offset mean checks the two-pass variance.
            let xs = random(&dims, 3, 2.0).affine(1.0, 3.0).unwrap();
            let reference = gn.reference.forward(&xs).unwrap();
            assert_close(&gn.forward(&xs).unwrap(), &reference, 2e-5, "group norm");
            let reference = candle_nn::ops::silu(&reference).unwrap();
            assert_close(
                &gn.forward_silu(&xs).unwrap(),
                &reference,
                2e-5,
                "group norm + silu",
            );
        }
    }

    #[test]
    fn non_contiguous_input_is_handled() {
        let gn = norm(8, 4, 1);
        let xs = random(&[2, 5, 8, 6], 9, 1.0).permute((0, 2, 1, 3)).unwrap();
        assert_close(
            &gn.forward_silu(&xs).unwrap(),
            &candle_nn::ops::silu(&gn.reference.forward(&xs).unwrap()).unwrap(),
            2e-5,
            "permuted input",
        );
    }

    #[test]
    fn same_bits_on_any_thread_count() {
        let gn = norm(32, 8, 5);
        let xs = random(&[2, 32, 17, 19], 11, 1.0);
        let one = with_threads(1, || gn.forward_silu(&xs).unwrap());
        let three = with_threads(3, || gn.forward_silu(&xs).unwrap());
        assert_eq!(
            one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            three.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn other_dtypes_use_candle() {
        let gn = norm(8, 4, 2);
        let xs = random(&[1, 8, 4, 4], 4, 1.0);
        let half = xs.to_dtype(candle_core::DType::F64).unwrap();
        let gn64 = GroupNorm::from_tensors(
            gn.weight.to_dtype(candle_core::DType::F64).unwrap(),
            gn.bias.to_dtype(candle_core::DType::F64).unwrap(),
            4,
            1e-5,
        )
        .unwrap();
        let ours = gn64.forward(&half).unwrap();
        assert_eq!(ours.dtype(), candle_core::DType::F64);
        assert_close(
            &ours.to_dtype(candle_core::DType::F32).unwrap(),
            &gn.forward(&xs).unwrap(),
            2e-5,
            "f64 through candle",
        );
    }
}
