//! diffusers' GEGLU gate, `a · gelu(b)` with the exact erf, where `a` and `b` are the two
//! halves of the last dimension of the feed-forward projection.
//!
//! candle's composition takes two strided views, runs the erf (in f64, one thread) on one
//! and multiplies, three passes over a tensor of 2 × 4096 × 2560 values at 64×64 latents.
//! The kernel reads both halves in place and writes the product once, on all threads.
//!
//! Invariants: f32 on the CPU only (elsewhere the candle composition, unchanged); one task
//! per row, so results do not depend on the number of threads.

use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::vmath::{self, dispatch};

/// `a * gelu_erf(b)` for `[a, b] = projected.chunk(2, last)`.
pub fn geglu(projected: &Tensor) -> Result<Tensor> {
    if super::on_cpu_f32(&[projected]) {
        projected.contiguous()?.apply_op1_no_bwd(&Geglu)
    } else {
        let halves = projected.chunk(2, D::Minus1)?;
        &halves[0] * halves[1].gelu_erf()?
    }
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "pixelgen-geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = super::contiguous_f32(storage, layout, "geglu input")?;
        let mut dims = layout.dims().to_vec();
        let Some(last) = dims.last_mut() else {
            bail!("geglu: the input needs at least one dimension");
        };
        if *last % 2 != 0 {
            bail!("geglu: the last dimension ({last}) must be even");
        }
        let width = *last;
        *last /= 2;
        let half = width / 2;
        let mut out = vec![0f32; xs.len() / 2];
        if half > 0 {
            out.par_chunks_mut(half)
                .zip(xs.par_chunks(width))
                .for_each(|(out, row)| gate(out, row));
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&dims)))
    }
}

dispatch! {
    fn gate(out: &mut [f32], row: &[f32]) {
        let (a, b) = row.split_at(out.len());
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a * vmath::gelu_erf(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::D;

    use super::geglu;
    use crate::cpu_ops::tests::{assert_close, random, with_threads};

    fn reference(projected: &candle_core::Tensor) -> candle_core::Tensor {
        let halves = projected.chunk(2, D::Minus1).unwrap();
        (&halves[0] * halves[1].gelu_erf().unwrap()).unwrap()
    }

    #[test]
    fn matches_candle_composition() {
        for dims in [vec![2, 7, 34], vec![3, 130], vec![1, 5, 3, 2]] {
            let xs = random(&dims, 21, 3.0);
            assert_close(&geglu(&xs).unwrap(), &reference(&xs), 1e-6, "geglu");
        }
        // A non-contiguous input.
        let xs = random(&[6, 4, 10], 22, 2.0).transpose(0, 1).unwrap();
        assert_close(
            &geglu(&xs).unwrap(),
            &reference(&xs),
            1e-6,
            "transposed geglu",
        );
    }

    #[test]
    fn odd_width_is_an_error() {
        assert!(geglu(&random(&[2, 5], 1, 1.0)).is_err());
    }

    #[test]
    fn same_bits_on_any_thread_count() {
        let xs = random(&[3, 33, 64], 23, 2.0);
        let one = with_threads(1, || geglu(&xs).unwrap());
        let two = with_threads(2, || geglu(&xs).unwrap());
        assert_eq!(
            one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            two.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
