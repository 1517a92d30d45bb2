//! CPU kernels for the operations that dominate Stable Diffusion on the CPU: 3×3 and 1×1
//! convolutions, attention, GroupNorm(+SiLU) and the GEGLU gate.
//!
//! Each public function or module here takes candle tensors and decides per call:
//! contiguous-able f32 tensors on the CPU go to the kernel (a candle custom op); every
//! other case (CUDA, Metal, f16, bf16, f64, and tensors that gradients flow back through
//! while training a LoRA) runs exactly the candle composition the UNet used before these
//! kernels existed, so the GPU path is unchanged and training differentiates.
//!
//! Invariants:
//! - **Thread-count independence.** Every output element is computed by one task, with a
//!   fixed summation order (gemm runs single-threaded inside a task), so the same inputs
//!   give the same bits on 1 or 64 threads. Tests check this for each kernel.
//! - **Same arithmetic as the reference** up to f32 rounding: the kernels reorder sums
//!   (tiles, online softmax) but never approximate beyond the ~2e-7 relative error of
//!   `vmath`'s `exp` and `erf`; unit tests compare each with candle's composition on random
//!   inputs.
//! - Threads come from rayon's global pool, the one candle's own CPU ops use, so
//!   `RAYON_NUM_THREADS` (candle's thread count) governs both.

mod attention;
mod conv;
mod geglu;
mod norm;
pub(crate) mod vmath;
mod winograd;

pub use attention::attention;
pub use conv::conv2d;
pub use geglu::geglu;
pub use norm::GroupNorm;

use candle_core::{CpuStorage, D, DType, Layout, Module, Result, Tensor, bail};

/// LayerNorm over the last dimension. candle-nn's fused kernel has no backward pass, so a
/// tensor that gradients flow back through (training a LoRA) takes the composition, in f32
/// for half-precision input (as PyTorch's autocast runs normalisations).
pub fn layer_norm(norm: &candle_nn::LayerNorm, eps: f64, xs: &Tensor) -> Result<Tensor> {
    if !xs.track_op() {
        return norm.forward(xs);
    }
    let dtype = xs.dtype();
    let xs = xs.to_dtype(DType::F32)?;
    let dim = xs.dim(D::Minus1)? as f64;
    let centred = xs.broadcast_sub(&(xs.sum_keepdim(D::Minus1)? / dim)?)?;
    let variance = (centred.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
    let normed = centred
        .broadcast_div(&(variance + eps)?.sqrt()?)?
        .broadcast_mul(&norm.weight().to_dtype(DType::F32)?)?;
    match norm.bias() {
        Some(bias) => normed.broadcast_add(&bias.to_dtype(DType::F32)?),
        None => Ok(normed),
    }?
    .to_dtype(dtype)
}

/// Softmax over the last dimension: candle-nn's fused kernel, or (it has no backward pass)
/// the composition for a tensor that gradients flow back through.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// Whether all `tensors` are f32 on the CPU, the case the kernels implement, and none is
/// part of a graph that gradients flow back through (training: the kernels have no
/// backward pass, the candle composition has).
fn on_cpu_f32(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// The f32 data of a contiguous CPU tensor, from a custom op's storage and layout.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{what}: expected an f32 tensor");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// A raw pointer that tasks may share because each writes a disjoint part of its buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    /// The pointer; a method, so closures capture the whole `Send + Sync` wrapper rather
    /// than the raw pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: only used for buffers whose tasks write disjoint regions (stated at each use),
// and the buffer outlives the parallel section that uses it.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{Device, Tensor};

    use crate::noise::{Stream, gaussian};

    /// Seeded Gaussian values of the given shape, times `scale`, as a CPU f32 tensor.
    pub fn random(dims: &[usize], seed: u64, scale: f32) -> Tensor {
        let count = dims.iter().product::<usize>();
        let values: Vec<f32> = gaussian(seed, Stream::InitialLatents, count)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// Asserts the same shape and, per element, `|a - b| <= tol · (1 + |b|)`.
    pub fn assert_close(ours: &Tensor, reference: &Tensor, tol: f32, what: &str) {
        assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
        let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut worst = (0.0f32, 0usize);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let err = (x - y).abs() / (1.0 + y.abs());
            assert!(err.is_finite(), "{what}: element {i} is {x}, reference {y}");
            if err > worst.0 {
                worst = (err, i);
            }
        }
        assert!(
            worst.0 <= tol,
            "{what}: element {} is {}, reference {} (error {} > {tol})",
            worst.1,
            a[worst.1],
            b[worst.1],
            worst.0
        );
    }

    /// Runs `f` on a fresh rayon pool of `threads` threads.
    pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }
}
