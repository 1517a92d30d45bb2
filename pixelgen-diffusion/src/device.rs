//! Choosing the device and precision, and the machine-wide lock on running a model.

use std::path::Path;

use candle_core::{DType, Device};

use crate::DiffusionError;

/// The device and precision to run on, as asked (`PIXELGEN_DEVICE`: `auto`,
/// `cpu`, `cuda`, `cuda:N`; `PIXELGEN_DTYPE`: `f32`, `f16`, `bf16`). `auto` takes the first
/// GPU when this build has CUDA and one is there, else the CPU. Half precision is the
/// default on a GPU, f32 on the CPU. The note, when there is one, is for the user (said
/// once per build). The warm server resolves its clients' requests with this too, so
/// that a build gets the device and precision it asked for.
pub fn select_device(
    device: &str,
    dtype: Option<&str>,
) -> Result<(Device, DType, Option<String>), DiffusionError> {
    let device = match device.trim() {
        "auto" | "" => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                cuda(0)?
            } else {
                Device::Cpu
            }
        }
        "cpu" => Device::Cpu,
        "cuda" => cuda(0)?,
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(ordinal) => cuda(ordinal)?,
            None => {
                return Err(DiffusionError::Device(format!(
                    "PIXELGEN_DEVICE=`{other}` is not a device: use auto, cpu, cuda or cuda:N"
                )));
            }
        },
    };
    let dtype = match dtype.map(str::trim) {
        None | Some("") => {
            if device.is_cpu() {
                DType::F32
            } else {
                DType::F16
            }
        }
        Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some(other) => {
            return Err(DiffusionError::Device(format!(
                "PIXELGEN_DTYPE=`{other}` is not a precision: use f32, f16 or bf16"
            )));
        }
    };
    let note = (!cfg!(feature = "cuda") && nvidia_gpu_present()).then(|| {
        "pixelgen: this machine has an NVIDIA GPU but pixelgen-build was built without its `cuda` feature, so Stable Diffusion runs on the CPU (slowly): add `features = [\"cuda\"]` to the pixelgen-build build-dependency (needs the CUDA toolkit's nvcc)".to_string()
    });
    Ok((device, dtype, note))
}

/// How many images go through the UNet together: `requested` (`PIXELGEN_BATCH`) when
/// given, else 1 on the CPU and 4 on a GPU.
pub fn batch_for(device: &Device, requested: Option<usize>) -> usize {
    requested
        .filter(|&b| b > 0)
        .unwrap_or(if device.is_cpu() { 1 } else { 4 })
}

fn cuda(ordinal: usize) -> Result<Device, DiffusionError> {
    if !cfg!(feature = "cuda") {
        return Err(DiffusionError::Device(
            "PIXELGEN_DEVICE asks for CUDA but pixelgen-build was built without its `cuda` feature"
                .into(),
        ));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| DiffusionError::Device(format!("cannot open CUDA device {ordinal}: {e}")))
}

/// Whether the NVIDIA driver is loaded, without linking CUDA.
fn nvidia_gpu_present() -> bool {
    Path::new("/proc/driver/nvidia/version").exists() || Path::new("/dev/nvidia0").exists()
}

/// A machine-wide lock on running Stable Diffusion: cargo runs the build scripts of several
/// crates at once, and two of them loading multi-gigabyte models onto one GPU (or into RAM)
/// together would run out of memory. Held from before loading until the backend is dropped.
pub struct DeviceLock {
    _lock: crate::advisory::AdvisoryLock,
}

impl DeviceLock {
    /// Waits for the lock in `dir` (the environment's `lock_dir`: `PIXELGEN_LOCK_DIR`, else
    /// the temporary folder).
    pub fn acquire(dir: &Path) -> Result<DeviceLock, DiffusionError> {
        let path = dir.join("pixelgen-diffusion.lock");
        let lock = crate::advisory::AdvisoryLock::acquire(&path).map_err(|e| {
            DiffusionError::Device(format!(
                "cannot take the device lock {}: {e}",
                path.display()
            ))
        })?;
        Ok(DeviceLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_lock_excludes_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = DeviceLock::acquire(dir.path()).unwrap();
        let other = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("pixelgen-diffusion.lock"))
            .unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok());
    }

    #[test]
    fn devices_and_precisions_are_checked() {
        let (device, dtype, _) = select_device("cpu", None).unwrap();
        assert!(device.is_cpu());
        assert_eq!(dtype, DType::F32);
        assert_eq!(select_device("cpu", Some("bf16")).unwrap().1, DType::BF16);
        let bad = select_device("tpu", None).unwrap_err().to_string();
        assert!(bad.contains("auto, cpu, cuda or cuda:N"), "{bad}");
        let bad = select_device("cpu", Some("f8")).unwrap_err().to_string();
        assert!(bad.contains("f32, f16 or bf16"), "{bad}");
        assert_eq!(batch_for(&Device::Cpu, None), 1);
        assert_eq!(batch_for(&Device::Cpu, Some(0)), 1);
        assert_eq!(batch_for(&Device::Cpu, Some(8)), 8);
    }
}
