//! Unit tests of weight loading: the memory-mapped loader against candle's own, half
//! precision widening, and the weight files a component folder may name.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::weights::{component_files, load_weights, widen_to_f32};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusion")
        .join(path)
}

/// The memory-mapped loader gives exactly what reading the file whole and converting
/// with candle gives, for every tensor, in the stored dtype and widened to f32.
#[test]
fn mapped_weights_equal_candles_own_loading() {
    let file = fixture("sd1/model/unet/diffusion_pytorch_model.safetensors");
    let reference = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    for dtype in [None, Some(DType::F32), Some(DType::BF16)] {
        let loaded = load_weights(std::slice::from_ref(&file), dtype, &Device::Cpu).unwrap();
        assert_eq!(loaded.len(), reference.len());
        for (name, expected) in &reference {
            let expected = match dtype {
                Some(d) => expected.to_dtype(d).unwrap(),
                None => expected.clone(),
            };
            let got = &loaded[name];
            assert_eq!(got.dtype(), expected.dtype(), "{name}");
            assert_eq!(got.dims(), expected.dims(), "{name}");
            let bits = |t: &Tensor| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
                    .into_iter()
                    .map(f64::to_bits)
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(got), bits(&expected), "{name} as {dtype:?}");
        }
    }
}

/// Widening matches `half`'s scalar conversion for every f16 and bf16 bit pattern
/// (NaN payloads, infinities, subnormals, both zeros), across chunk boundaries.
#[test]
fn widening_is_exact_for_every_half_value() {
    let bytes: Vec<u8> = (0..=u16::MAX)
        .chain(0..=u16::MAX)
        .flat_map(u16::to_le_bytes)
        .collect();
    // The same values one byte off their alignment, as a file may store them.
    let shifted: Vec<u8> = std::iter::once(0).chain(bytes.iter().copied()).collect();
    let widened = widen_to_f32(&bytes, DType::F16);
    let widened_bf = widen_to_f32(&bytes, DType::BF16);
    assert_eq!(
        widen_to_f32(&shifted[1..], DType::F16)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        widened.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let bits = u16::from_le_bytes([pair[0], pair[1]]);
        let f = half::f16::from_bits(bits).to_f32();
        let b = half::bf16::from_bits(bits).to_f32();
        assert!(
            widened[i].to_bits() == f.to_bits() || (f.is_nan() && widened[i].is_nan()),
            "f16 {bits:#06x}"
        );
        assert!(
            widened_bf[i].to_bits() == b.to_bits() || (b.is_nan() && widened_bf[i].is_nan()),
            "bf16 {bits:#06x}"
        );
    }
}

#[test]
fn a_weight_index_naming_files_outside_its_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for shard in ["../secret.safetensors", "/etc/passwd", "weights.bin"] {
        let index = serde_json::json!({ "weight_map": { "conv.weight": shard } });
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let error = component_files(dir.path()).unwrap_err().to_string();
        assert!(error.contains(&format!("names `{shard}`")), "{error}");
    }
}

#[test]
fn a_file_that_is_not_safetensors_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unet.safetensors");
    std::fs::write(&file, b"not a safetensors file").unwrap();
    let error = load_weights(std::slice::from_ref(&file), Some(DType::F32), &Device::Cpu)
        .expect_err("refused")
        .to_string();
    assert!(error.contains(&file.display().to_string()), "{error}");
}
