//! Reading weight files: safetensors memory-mapped and converted tensor by tensor, and the
//! files of one component folder (a file, or the shards its index lists; never a pickle).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::read_json;
use crate::DiffusionError;
use crate::files::{LocateError, is_pickle};
use crate::lora::TensorMap;

/// Reads one safetensors file into host memory, each tensor as stored.
pub fn read_safetensors(path: &Path) -> Result<TensorMap, DiffusionError> {
    load_weights(&[path.to_path_buf()], None, &Device::Cpu)
}

/// Reads the tensors of safetensors `files` straight into `dtype` (floating-point tensors;
/// others keep theirs) on `device`.
///
/// The files are memory-mapped and each tensor is copied once out of the map: on the CPU,
/// half-precision weights are widened to f32 on the way (F16C/SIMD through `half`, in
/// parallel); on a GPU they are uploaded as stored and converted there. Nothing is read
/// whole into memory first, so a model costs its loaded size, not that plus its files.
pub fn load_weights(
    files: &[PathBuf],
    dtype: Option<DType>,
    device: &Device,
) -> Result<TensorMap, DiffusionError> {
    let invalid = |what: String, source| DiffusionError::Weights {
        path: files.first().cloned().unwrap_or_default(),
        what,
        source: Box::new(source),
    };
    // SAFETY: the map is only read, and every tensor is copied out of it before it is
    // dropped at the end of this function. A file truncated by another process while
    // mapped would fault; pixelgen never writes model files, and their users replace
    // them by rename, which leaves this mapping intact.
    let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }
        .map_err(|e| invalid("cannot read safetensors".into(), e))?;
    let views = mapped.tensors();
    let load_one = |(name, view): &(String, safetensors::tensor::TensorView<'_>)| {
        weight_from_view(view, dtype, device)
            .map(|tensor| (name.clone(), tensor))
            .map_err(|e| invalid(format!("tensor `{name}`"), e))
    };
    if device.is_cpu() {
        use rayon::prelude::*;
        views.par_iter().map(load_one).collect()
    } else {
        views.iter().map(load_one).collect()
    }
}

/// One tensor out of a mapped file, converted to `dtype` if it is floating point.
fn weight_from_view(
    view: &safetensors::tensor::TensorView<'_>,
    dtype: Option<DType>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    use safetensors::Dtype as Stored;
    let shape = view.shape();
    let stored = match view.dtype() {
        Stored::F16 => DType::F16,
        Stored::BF16 => DType::BF16,
        Stored::F32 => DType::F32,
        Stored::F64 => DType::F64,
        Stored::I64 => DType::I64,
        Stored::I32 => DType::I32,
        Stored::I16 => DType::I16,
        Stored::U32 => DType::U32,
        Stored::U8 => DType::U8,
        other => candle_core::bail!("stored as {other:?}, which pixelgen does not load"),
    };
    let target = match dtype {
        Some(target) if stored.is_float() => target,
        _ => stored,
    };
    if device.is_cpu() && target == DType::F32 && matches!(stored, DType::F16 | DType::BF16) {
        let widened = widen_to_f32(view.data(), stored);
        return Tensor::from_vec(widened, shape, device);
    }
    Tensor::from_raw_buffer(view.data(), stored, shape, device)?.to_dtype(target)
}

/// Little-endian f16 or bf16 bytes → f32, in parallel chunks (results do not depend on
/// the split: each value converts on its own).
pub(super) fn widen_to_f32(bytes: &[u8], stored: DType) -> Vec<f32> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let count = bytes.len() / 2;
    let mut out = vec![0f32; count];
    advise_huge_pages(&mut out);
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * 2))
        .for_each(|(dst, src)| {
            // SAFETY: every bit pattern is a valid u16; `align_to` only hands out the
            // aligned middle. Safetensors stores little-endian values, so the in-place
            // view is used only on little-endian machines.
            let (head, aligned, tail) = unsafe { src.align_to::<u16>() };
            let copied: Vec<u16>;
            let bits: &[u16] =
                if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
                    aligned
                } else {
                    copied = src
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    &copied
                };
            if stored == DType::BF16 {
                bits.reinterpret_cast::<half::bf16>()
                    .convert_to_f32_slice(dst);
            } else {
                bits.reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(dst);
            }
        });
    out
}

/// Asks the kernel to back `buffer` with transparent huge pages before it is first
/// written. A freshly allocated multi-gigabyte buffer costs one page fault and one zeroed
/// page per 4 KiB on first touch; a profile of loading SD1.5 (2 GB fp16 → 4 GB f32) put
/// about 60% of the load in those faults (`clear_page_erms` alone 40%). With 2 MiB pages
/// the faults are 512 times fewer. Only a hint: where THP is off, nothing changes.
fn advise_huge_pages(buffer: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buffer.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buffer);
        let first = start.next_multiple_of(HUGE);
        if end > first + HUGE {
            let length = (end - first) / HUGE * HUGE;
            // SAFETY: the range lies inside `buffer`, which this function borrows mutably;
            // MADV_HUGEPAGE changes no contents, only how the pages are backed.
            unsafe {
                libc::madvise(first as *mut libc::c_void, length, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}

/// The weight files of one component folder: a safetensors file, or its shards listed by
/// an index, the plain weights first, else the fp16 variant (what `variant="fp16"` saves).
/// Pickle files are refused, not read.
pub(super) fn component_files(dir: &Path) -> Result<Vec<PathBuf>, DiffusionError> {
    for stem in ["diffusion_pytorch_model", "model"] {
        for variant in ["", ".fp16"] {
            let file = dir.join(format!("{stem}{variant}.safetensors"));
            if file.is_file() {
                return Ok(vec![file]);
            }
            // diffusers names a variant's index `…safetensors.index.fp16.json`; some tools
            // write `….fp16.safetensors.index.json`.
            let index = [
                format!("{stem}.safetensors.index{variant}.json"),
                format!("{stem}{variant}.safetensors.index.json"),
            ]
            .into_iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file());
            if let Some(index) = index {
                let index: serde_json::Value = read_json(&index)?;
                let mut files: Vec<&str> = index
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                files.sort_unstable();
                files.dedup();
                // Shards live beside their index: a name that leaves the folder is refused.
                if let Some(bad) = files.iter().find(|shard| {
                    Path::new(shard).components().count() != 1 || !shard.ends_with(".safetensors")
                }) {
                    return Err(DiffusionError::Invalid {
                        path: dir.to_path_buf(),
                        message: format!(
                            "the weight index names `{bad}`, which is not a .safetensors file in this folder"
                        ),
                    });
                }
                if files.is_empty() {
                    return Err(DiffusionError::Invalid {
                        path: dir.to_path_buf(),
                        message: "the weight index has an empty weight_map".into(),
                    });
                }
                return Ok(files.into_iter().map(|shard| dir.join(shard)).collect());
            }
        }
    }
    let pickle = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| is_pickle(p))
    });
    match pickle {
        Some(path) => Err(LocateError::Pickle { path }.into()),
        None => Err(DiffusionError::Invalid {
            path: dir.to_path_buf(),
            message: "no .safetensors weights in this folder".into(),
        }),
    }
}

/// The weights of one component folder, loaded in `dtype` on `device`.
pub(crate) fn component_weights(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<TensorMap, DiffusionError> {
    load_weights(&component_files(dir)?, Some(dtype), device)
}

/// transformers ≥ 5.6 saves CLIP text models without the `text_model.` prefix that every
/// earlier checkpoint has; both load.
pub(super) fn with_text_model_prefix(map: TensorMap) -> TensorMap {
    if map.keys().any(|k| k.starts_with("text_model.")) {
        return map;
    }
    map.into_iter()
        .map(|(name, tensor)| {
            let prefixed = ["embeddings.", "encoder.", "final_layer_norm."]
                .iter()
                .any(|p| name.starts_with(p));
            (
                if prefixed {
                    format!("text_model.{name}")
                } else {
                    name
                },
                tensor,
            )
        })
        .collect()
}
