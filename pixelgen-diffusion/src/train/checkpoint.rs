//! Checkpoints of a training run: the factors and the optimiser's moments with the
//! settings' fingerprint, written atomically, so that an interrupted run resumes exactly.

use candle_core::{Device, Tensor};

use super::{AdamW, Adapter, LoraAdapters};

/// A training run saved at a step: the factors and the optimiser's moments, with the
/// settings' fingerprint, so that a run interrupted after it resumes exactly.
/// Writes the factors of `sets` (module names do not collide between a UNet and a text
/// encoder), `optimizer`'s state and `fingerprint` to `path` (atomically).
pub fn save_checkpoint(
    sets: &[&LoraAdapters],
    optimizer: &AdamW,
    fingerprint: &str,
    path: &std::path::Path,
) -> std::result::Result<(), String> {
    let mut tensors: Vec<(String, Tensor)> = optimizer
        .state()
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    for (set, module, adapter) in set_modules(sets) {
        tensors.push((
            format!("{set}down.{module}"),
            adapter.down.as_tensor().clone(),
        ));
        tensors.push((format!("{set}up.{module}"), adapter.up.as_tensor().clone()));
    }
    let header = std::collections::HashMap::from([
        ("steps".to_owned(), optimizer.steps().to_string()),
        ("fingerprint".to_owned(), fingerprint.to_owned()),
    ]);
    write_safetensors(&tensors, header, path)
}

/// Every module of every set, with the prefix its checkpoint entries take: none for the
/// first set (the UNet's), `s<i>.` for the others (two text encoders share module names).
fn set_modules<'a>(
    sets: &'a [&'a LoraAdapters],
) -> impl Iterator<Item = (String, &'a String, &'a Adapter)> {
    sets.iter().enumerate().flat_map(|(index, set)| {
        let prefix = if index == 0 {
            String::new()
        } else {
            format!("s{index}.")
        };
        set.modules
            .iter()
            .map(move |(module, adapter)| (prefix.clone(), module, adapter))
    })
}

/// Writes `tensors` with `header` to `path` through a temporary file renamed into place, so
/// that an interrupted write leaves the previous file whole.
pub(super) fn write_safetensors(
    tensors: &[(String, Tensor)],
    header: std::collections::HashMap<String, String>,
    path: &std::path::Path,
) -> std::result::Result<(), String> {
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    safetensors::serialize_to_file(data, Some(header), &temporary)
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Takes back a checkpoint written by [`save_checkpoint`] for the same `fingerprint`:
/// sets the factors of `sets` and `optimizer`'s state, and returns the step to continue
/// from. `Ok(None)` when the checkpoint is of another run.
pub fn resume(
    sets: &[&LoraAdapters],
    optimizer: &mut AdamW,
    fingerprint: &str,
    path: &std::path::Path,
) -> std::result::Result<Option<usize>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("fingerprint").map(String::as_str) != Some(fingerprint) {
        return Ok(None);
    }
    let steps: usize = metadata
        .get("steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{}: no step count", path.display()))?;
    let device = sets
        .iter()
        .flat_map(|set| set.modules.values())
        .next()
        .map(|a| a.down.device().clone())
        .unwrap_or(Device::Cpu);
    let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let broken = |what: String| format!("{}: {what}", path.display());
    for (set, module, adapter) in set_modules(sets) {
        for (prefix, var) in [("down", &adapter.down), ("up", &adapter.up)] {
            let saved = tensors
                .get(&format!("{set}{prefix}.{module}"))
                .ok_or_else(|| broken(format!("no `{set}{prefix}.{module}`")))?;
            var.set(saved).map_err(|e| broken(e.to_string()))?;
        }
    }
    optimizer
        .restore(&tensors, steps)
        .map_err(|e| broken(e.to_string()))?;
    Ok(Some(steps))
}
