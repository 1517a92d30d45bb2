//! Multi-head attention, `softmax(q kᵀ / √d) v`, as a fused, tiled kernel on the CPU
//! (flash-attention style: an online softmax over blocks of keys).
//!
//! candle's composition splits heads with copies, builds the whole score matrix (at 64×64
//! latents, 2 × 8 × 4096 × 4096 f32 = 2 GiB per self-attention), scales it in a separate
//! pass, softmaxes it with scalar `exp`, multiplies, and copies heads back. Here each task
//! takes one (batch item, head, block of [`QUERY_BLOCK`] queries), reads q, k and v in
//! place in their `[batch, tokens, heads · head_dim]` layout, keeps a block of scores in
//! cache, and writes its rows of the output in the same layout, ready for `to_out`.
//!
//! Invariants: f32 on the CPU only ([`attention`] runs the candle composition elsewhere,
//! with the scores in f32 as before); each output element belongs to one task, which walks
//! the keys in a fixed order with single-threaded gemm calls, so results do not depend on
//! the number of threads.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::SharedMut;
use super::vmath::{self, dispatch};

/// Queries per task: 64 rows of scores against [`KEY_BLOCK`] keys stay in L2.
const QUERY_BLOCK: usize = 128;
/// Keys per step of the online softmax.
const KEY_BLOCK: usize = 256;

/// Attention of `q` (`[batch, queries, heads · head_dim]`) over `k` and `v`
/// (`[batch, keys, heads · head_dim]`), returning `[batch, queries, heads · head_dim]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, queries, dim) = q.dims3()?;
    if heads == 0 || !dim.is_multiple_of(heads) {
        bail!("attention: {dim} channels cannot be split into {heads} heads");
    }
    let head_dim = dim / heads;
    if super::on_cpu_f32(&[q, k, v]) {
        let op = Attention {
            heads,
            scale: (head_dim as f32).powf(-0.5),
        };
        return q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op);
    }
    let split = |t: &Tensor| -> Result<Tensor> {
        let n = t.dim(1)?;
        t.reshape((batch, n, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    // Attention weights in f32 even when the model runs in half precision.
    let scores = (q
        .to_dtype(DType::F32)?
        .matmul(&k.to_dtype(DType::F32)?.t()?)?
        * (head_dim as f64).powf(-0.5))?;
    let weights = super::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    weights
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((batch, queries, dim))
}

struct Attention {
    heads: usize,
    scale: f32,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "pixelgen-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = super::contiguous_f32(q, q_layout, "attention queries")?;
        let k = super::contiguous_f32(k, k_layout, "attention keys")?;
        let v = super::contiguous_f32(v, v_layout, "attention values")?;
        let (batch, queries, dim) = q_layout.shape().dims3()?;
        let (k_batch, keys, k_dim) = k_layout.shape().dims3()?;
        if k_layout.dims() != v_layout.dims() || k_batch != batch || k_dim != dim {
            bail!(
                "attention: queries {:?}, keys {:?} and values {:?} do not fit",
                q_layout.dims(),
                k_layout.dims(),
                v_layout.dims()
            );
        }
        let mut out = vec![0f32; q.len()];
        if keys == 0 {
            bail!("attention over no keys");
        }
        let shape = Shapes {
            keys,
            dim,
            head_dim: dim / self.heads,
        };
        let blocks = queries.div_ceil(QUERY_BLOCK);
        let tasks = batch * self.heads * blocks;
        let dst = SharedMut(out.as_mut_ptr());
        (0..tasks).into_par_iter().for_each_init(
            || Scratch::new(shape.head_dim),
            |scratch, task| {
                let block = task % blocks;
                let head = (task / blocks) % self.heads;
                let b = task / (blocks * self.heads);
                let first = block * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(queries - first);
                let offset = |tokens: usize| b * tokens * dim + head * shape.head_dim;
                // SAFETY: this task writes only rows [first, first + rows) of batch item b,
                // columns of its own head; no other task writes there, and `out` outlives
                // the parallel loop.
                let out = unsafe { dst.get().add(offset(queries) + first * dim) };
                attend_block(
                    &shape,
                    self.scale,
                    &q[offset(queries) + first * dim..],
                    rows,
                    &k[offset(keys)..],
                    &v[offset(keys)..],
                    out,
                    scratch,
                );
            },
        );
        Ok((CpuStorage::F32(out), Shape::from_dims(q_layout.dims())))
    }
}

#[derive(Clone, Copy)]
struct Shapes {
    keys: usize,
    /// The row stride of q, k, v and the output: heads · head_dim.
    dim: usize,
    head_dim: usize,
}

/// A task's working memory, reused across the tasks a thread runs.
struct Scratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
    row_max: Vec<f32>,
    row_sum: Vec<f32>,
}

impl Scratch {
    fn new(head_dim: usize) -> Self {
        Self {
            scores: vec![0.0; QUERY_BLOCK * KEY_BLOCK],
            acc: vec![0.0; QUERY_BLOCK * head_dim],
            row_max: vec![0.0; QUERY_BLOCK],
            row_sum: vec![0.0; QUERY_BLOCK],
        }
    }
}

/// One block of `rows` queries of one head: `q` starts at its first query's head slice,
/// `k` and `v` at the first key's; `out` points at the first output element.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    shape: &Shapes,
    scale: f32,
    q: &[f32],
    rows: usize,
    k: &[f32],
    v: &[f32],
    out: *mut f32,
    scratch: &mut Scratch,
) {
    let Shapes {
        keys,
        dim,
        head_dim,
    } = *shape;
    let acc = &mut scratch.acc[..rows * head_dim];
    let row_max = &mut scratch.row_max[..rows];
    let row_sum = &mut scratch.row_sum[..rows];
    row_max.fill(f32::NEG_INFINITY);
    row_sum.fill(0.0);
    for first_key in (0..keys).step_by(KEY_BLOCK) {
        let n = KEY_BLOCK.min(keys - first_key);
        let scores = &mut scratch.scores[..rows * n];
        let k = &k[first_key * dim..];
        let v = &v[first_key * dim..];
        // SAFETY: q holds `rows` rows of stride `dim` from its start, each with head_dim
        // values; k holds `n` rows from first_key; scores is rows × n. gemm reads and writes
        // within these bounds (the slices' lengths cover the last row's head slice).
        unsafe {
            // scores = scale · q kᵀ, the same single rounding of `scale · sum` as the
            // reference's matmul followed by a multiply.
            gemm(
                rows,
                n,
                head_dim,
                scores.as_mut_ptr(),
                1,
                n as isize,
                false,
                q.as_ptr(),
                1,
                dim as isize,
                k.as_ptr(),
                dim as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        let first_block = first_key == 0;
        for (i, row) in scores.chunks_exact_mut(n).enumerate() {
            let correction = softmax_step(row, &mut row_max[i], &mut row_sum[i]);
            if !first_block && correction != 1.0 {
                for a in &mut acc[i * head_dim..(i + 1) * head_dim] {
                    *a *= correction;
                }
            }
        }
        // SAFETY: scores is rows × n, v holds n rows of stride dim with head_dim values
        // each, acc is rows × head_dim.
        unsafe {
            gemm(
                rows,
                head_dim,
                n,
                acc.as_mut_ptr(),
                1,
                head_dim as isize,
                !first_block,
                scores.as_ptr(),
                1,
                n as isize,
                v.as_ptr(),
                1,
                dim as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
    for (i, (acc, &sum)) in acc.chunks_exact(head_dim).zip(row_sum.iter()).enumerate() {
        let inv = 1.0 / sum;
        for (d, &a) in acc.iter().enumerate() {
            // SAFETY: row i of this task's output block, column d of its head (see the
            // caller); written by this task only.
            unsafe { *out.add(i * dim + d) = a * inv };
        }
    }
}

dispatch! {
    /// One online-softmax step for a row of scores: replaces them by `exp(s - max)`
    /// against the running maximum, updates the running sum, and returns the factor that
    /// rescales what was accumulated against the previous maximum.
    fn softmax_step(row: &mut [f32], running_max: &mut f32, running_sum: &mut f32) -> f32 {
        let block_max = vmath::max(row);
        let new_max = running_max.max(block_max);
        if new_max == f32::NEG_INFINITY {
            // Every score so far is -inf: nothing to weigh yet (torch gives NaN here; with
            // finite inputs it cannot happen).
            row.fill(0.0);
            return 1.0;
        }
        for s in row.iter_mut() {
            *s = vmath::exp(*s - new_max);
        }
        let correction = vmath::exp(*running_max - new_max);
        *running_sum = *running_sum * correction + vmath::sum(row);
        *running_max = new_max;
        correction
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor};

    use super::{KEY_BLOCK, QUERY_BLOCK, attention};
    use crate::cpu_ops::tests::{assert_close, random, with_threads};

    /// The composition the UNet used before the kernel (via f64 so it is not itself
    /// the kernel).
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        attention(&f64(q), &f64(k), &f64(v), heads)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    #[test]
    fn matches_reference_across_block_edges() {
        // Query counts on both sides of a block edge, key counts over one and several key
        // blocks, odd head sizes, batch > 1.
        let cases = [
            (2, QUERY_BLOCK + 3, QUERY_BLOCK + 3, 3, 5),
            (1, 7, 77, 2, 8),
            (3, QUERY_BLOCK - 1, 2 * KEY_BLOCK + 17, 4, 12),
            (2, 2 * QUERY_BLOCK, KEY_BLOCK, 1, 40),
            (1, 1, 1, 1, 3),
        ];
        for (i, &(batch, queries, keys, heads, head_dim)) in cases.iter().enumerate() {
            let dim = heads * head_dim;
            let seed = 100 + 10 * i as u64;
            // Large scores make the softmax peaked, which tests the running rescale.
            let q = random(&[batch, queries, dim], seed, 3.0);
            let k = random(&[batch, keys, dim], seed + 1, 3.0);
            let v = random(&[batch, keys, dim], seed + 2, 1.0);
            assert_close(
                &attention(&q, &k, &v, heads).unwrap(),
                &reference(&q, &k, &v, heads),
                2e-5,
                &format!("case {i}"),
            );
        }
    }

    #[test]
    fn heads_land_in_their_own_columns() {
        let q = random(&[2, 100, 32], 1, 1.0);
        let k = random(&[2, 600, 32], 2, 1.0);
        let v = random(&[2, 600, 32], 3, 1.0);
        let ours = attention(&q, &k, &v, 4).unwrap();
        for head in 0..4 {
            let slice = |t: &Tensor| t.narrow(2, head * 8, 8).unwrap().contiguous().unwrap();
            let single = reference(&slice(&q), &slice(&k), &slice(&v), 1);
            assert_close(&slice(&ours), &single, 2e-5, "head slices");
        }
    }

    #[test]
    fn same_bits_on_any_thread_count() {
        let q = random(&[2, 3 * QUERY_BLOCK + 5, 24], 7, 2.0);
        let k = random(&[2, KEY_BLOCK + 9, 24], 8, 2.0);
        let v = random(&[2, KEY_BLOCK + 9, 24], 9, 1.0);
        let one = with_threads(1, || attention(&q, &k, &v, 3).unwrap());
        let four = with_threads(4, || attention(&q, &k, &v, 3).unwrap());
        assert_eq!(
            one.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            four.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let q = random(&[1, 4, 8], 1, 1.0);
        let k = random(&[1, 5, 8], 2, 1.0);
        let v = random(&[1, 6, 8], 3, 1.0);
        assert!(attention(&q, &k, &v, 2).is_err());
        assert!(attention(&q, &k, &k, 3).is_err());
    }
}
