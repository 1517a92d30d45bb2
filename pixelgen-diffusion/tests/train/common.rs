//! What the `train` tests share: the fixtures, the tiny SD1 UNet, and the checks of a
//! step's loss and gradients against PyTorch's.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pixelgen_diffusion::config::{SchedulerConfig, UnetConfig};
use pixelgen_diffusion::lora::TensorMap;
use pixelgen_diffusion::train::{LoraAdapters, NoiseSchedule};

pub(super) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub(super) fn json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The tiny SD1 fixture's UNet config, training noise schedule and (frozen) weights.
pub(super) fn sd1_unet() -> (UnetConfig, NoiseSchedule, TensorMap) {
    let model = fixtures().join("diffusion/sd1/model");
    let scheduler: SchedulerConfig = json(&model.join("scheduler/scheduler_config.json"));
    let frozen = candle_core::safetensors::load(
        model.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    (
        json(&model.join("unet/config.json")),
        NoiseSchedule::new(&scheduler).unwrap(),
        frozen,
    )
}

pub(super) fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The tensors of a step fixture whose names start with `prefix`, without it.
pub(super) fn with_prefix(step: &TensorMap, prefix: &str) -> TensorMap {
    step.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
        .collect()
}

/// transformers 5 names a text encoder's modules without `text_model.`; pixelgen's CLIP
/// (like its loader) wants it (the projection keeps its name).
pub(super) fn prefixed(map: TensorMap) -> TensorMap {
    map.into_iter()
        .map(|(k, v)| {
            if k.starts_with("text_model.") || k.starts_with("text_projection") {
                (k, v)
            } else {
                (format!("text_model.{k}"), v)
            }
        })
        .collect()
}

/// The two captions' token ids a step fixture stored (as f32) under `name`.
pub(super) fn token_ids(step: &TensorMap, name: &str) -> Vec<Vec<u32>> {
    (0..2)
        .map(|i| {
            step[name]
                .get(i)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| v as u32)
                .collect()
        })
        .collect()
}

/// The timesteps a step fixture drew.
pub(super) fn timesteps_of(step: &TensorMap) -> Vec<usize> {
    step["timesteps"]
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|t| t as usize)
        .collect()
}

/// The loss against PyTorch's (relative error ≤ 1e-4); returns the relative error.
pub(super) fn check_loss(label: &str, loss: &Tensor, step: &TensorMap) -> f32 {
    let ours = loss.to_scalar::<f32>().unwrap();
    let reference = step["loss"].to_vec1::<f32>().unwrap()[0];
    let relative = ((ours - reference) / reference).abs();
    eprintln!("{label}: loss {ours} vs PyTorch {reference} (relative error {relative:.2e})");
    assert!(relative <= 1e-4, "{label}: loss {ours} vs {reference}");
    relative
}

/// Every factor of `adapters` has a gradient, and it is PyTorch's
/// (`{prefix}{module}.lora_A.default.weight`, the module named as PyTorch named it: `strip`
/// removed) within a relative max error of 1e-3. Returns the worst error and its name.
pub(super) fn check_gradients(
    label: &str,
    grads: &candle_core::backprop::GradStore,
    adapters: &LoraAdapters,
    step: &TensorMap,
    prefix: &str,
    strip: &str,
) -> (f32, String) {
    let missing: Vec<String> = adapters
        .modules()
        .flat_map(|(m, a)| [(format!("{m}.down"), &a.down), (format!("{m}.up"), &a.up)])
        .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
        .map(|(n, _)| n)
        .collect();
    assert!(
        missing.is_empty(),
        "{label}: no gradient for {} factors: {missing:#?}",
        missing.len()
    );
    let mut worst = (0f32, String::new());
    for (module, adapter) in adapters.modules() {
        let module = module.trim_start_matches(strip);
        for (factor, var) in [("lora_A", &adapter.down), ("lora_B", &adapter.up)] {
            let name = format!("{module}.{factor}.default.weight");
            let expected = &step[&format!("{prefix}{name}")];
            let got = grads.get(var.as_tensor()).unwrap();
            let error = max_abs(&(got - expected).unwrap()) / max_abs(expected).max(1e-12);
            if error > worst.0 {
                worst = (error, name.clone());
            }
            assert!(
                error <= 1e-3,
                "{label}: {name}: relative max error {error:.2e}"
            );
        }
    }
    worst
}
