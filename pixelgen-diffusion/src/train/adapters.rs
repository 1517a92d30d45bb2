//! The trainable LoRA factors: which modules a LoRA adapts, the factors' initialisation (or
//! those of a PEFT file), and the model weights with `W + scale · up · down` in the graph.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Shape, Tensor, Var, bail};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::lora::TensorMap;
use crate::noise::{self, Stream};

/// The UNet projections a style LoRA adapts by default: attention's query, key, value and
/// output (diffusers' training script's `target_modules`).
pub const ATTENTION_PROJECTIONS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// The UNet convolutions `--conv` adapts too: each resnet's two 3×3 convolutions (kohya's
/// LoCon on ResBlocks).
pub const RESNET_CONVOLUTIONS: [&str; 2] = ["conv1", "conv2"];

/// The text encoder's projections a LoRA adapts with `--text-encoder` (PEFT's targets in
/// diffusers' DreamBooth LoRA script).
pub const TEXT_ATTENTION_PROJECTIONS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];

/// One adapted module: `W' = W + scale · up · down`.
#[derive(Debug)]
pub struct Adapter {
    /// `[rank, in_features]` (PEFT's `lora_A`, kohya's `lora_down`).
    pub down: Var,
    /// `[out_features, rank]` (PEFT's `lora_B`, kohya's `lora_up`).
    pub up: Var,
}

/// The trainable factors of one model, by module name.
#[derive(Debug)]
pub struct LoraAdapters {
    pub rank: usize,
    pub alpha: f64,
    pub(super) modules: BTreeMap<String, Adapter>,
}

impl LoraAdapters {
    /// New adapters on every 2-D weight `<module>.weight` of `weights` whose module ends
    /// with one of `targets` (e.g. [`ATTENTION_PROJECTIONS`]), initialised as diffusers'
    /// training script asks PEFT to (`init_lora_weights="gaussian"`): `down` normal with
    /// standard deviation 1/rank from `seed`, `up` zero, so training starts from the
    /// model itself.
    pub fn new(
        weights: &TensorMap,
        targets: &[&str],
        rank: usize,
        alpha: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if rank == 0 {
            bail!("a LoRA's rank must be at least 1");
        }
        let mut names: Vec<&String> = weights
            .iter()
            .filter(|(name, tensor)| {
                (tensor.rank() == 2 || tensor.rank() == 4)
                    && name.strip_suffix(".weight").is_some_and(|module| {
                        targets.iter().any(|t| module.ends_with(&format!(".{t}")))
                    })
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        if names.is_empty() {
            bail!("the model has no weights named like {}", targets.join(", "));
        }
        let mut modules = BTreeMap::new();
        for (index, name) in names.into_iter().enumerate() {
            // A linear weight is `[out, in]`; a convolution's `[out, in, kh, kw]` gets a down
            // convolution `[rank, in, kh, kw]` and a 1×1 up `[out, rank, 1, 1]` (LoCon).
            let dims = weights[name].dims().to_vec();
            let (down_shape, up_shape) = match *dims.as_slice() {
                [out, input] => (vec![rank, input], vec![out, rank]),
                [out, input, kh, kw] => (vec![rank, input, kh, kw], vec![out, rank, 1, 1]),
                _ => bail!("`{name}` is neither a linear nor a convolution weight"),
            };
            let fan_in: usize = down_shape[1..].iter().product();
            let values = noise::gaussian(seed, Stream::LoraFactor(index), rank * fan_in);
            let down = (Tensor::from_vec(values, down_shape, device)? / rank as f64)?;
            let up = Tensor::zeros(up_shape, DType::F32, device)?;
            let module = name.trim_end_matches(".weight").to_owned();
            modules.insert(
                module,
                Adapter {
                    down: Var::from_tensor(&down)?,
                    up: Var::from_tensor(&up)?,
                },
            );
        }
        Ok(LoraAdapters {
            rank,
            alpha,
            modules,
        })
    }

    /// Adapters with the factors of a PEFT state dict (`<module>.lora_A[.<adapter>].weight`
    /// and `lora_B`), names relative to the model (`prefix` stripped, e.g. `unet.` or none).
    pub fn from_peft(factors: &TensorMap, prefix: &str, alpha: f64) -> Result<Self> {
        let mut downs = BTreeMap::new();
        let mut ups = BTreeMap::new();
        for (name, tensor) in factors {
            let Some(name) = name.strip_prefix(prefix) else {
                continue;
            };
            let name = name.replace(".default.weight", ".weight");
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                downs.insert(module.to_owned(), tensor.to_dtype(DType::F32)?);
            } else if let Some(module) = name.strip_suffix(".lora_B.weight") {
                ups.insert(module.to_owned(), tensor.to_dtype(DType::F32)?);
            }
        }
        let mut modules = BTreeMap::new();
        let mut rank = None;
        for (module, down) in downs {
            let Some(up) = ups.remove(&module) else {
                bail!("LoRA factors: `{module}` has lora_A but no lora_B");
            };
            let r = down.dim(0)?;
            if *rank.get_or_insert(r) != r || up.dim(1)? != r {
                bail!("LoRA factors: `{module}` has another rank than the others");
            }
            modules.insert(
                module,
                Adapter {
                    down: Var::from_tensor(&down)?,
                    up: Var::from_tensor(&up)?,
                },
            );
        }
        if let Some(module) = ups.keys().next() {
            bail!("LoRA factors: `{module}` has lora_B but no lora_A");
        }
        let Some(rank) = rank else {
            bail!("LoRA factors: none found under `{prefix}`");
        };
        Ok(LoraAdapters {
            rank,
            alpha,
            modules,
        })
    }

    /// `alpha / rank`, the factor the product is scaled by (PEFT's and kohya's).
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn modules(&self) -> impl Iterator<Item = (&str, &Adapter)> {
        self.modules.iter().map(|(name, a)| (name.as_str(), a))
    }

    /// Every factor, down then up per module in name order: what the optimiser updates.
    pub fn vars(&self) -> Vec<Var> {
        self.modules
            .values()
            .flat_map(|a| [a.down.clone(), a.up.clone()])
            .collect()
    }

    /// A builder over `frozen` in which each adapted weight is `W + scale · up · down`,
    /// computed now from the factors' current values as part of the autograd graph; the
    /// model computes in f32.
    pub fn weights(&self, frozen: &TensorMap, device: &Device) -> Result<VarBuilder<'static>> {
        self.weights_in(frozen, device, DType::F32)
    }

    /// [`weights`](Self::weights) for a model computing in `dtype`. Mixed precision (bf16 or
    /// f16): the factors stay f32, the product is taken in f32 and cast to `dtype`, so the
    /// gradient reaches the f32 factors through the cast.
    pub fn weights_in(
        &self,
        frozen: &TensorMap,
        device: &Device,
        dtype: DType,
    ) -> Result<VarBuilder<'static>> {
        let mut adapted = frozen.clone();
        let scale = self.scale();
        for (module, adapter) in &self.modules {
            let name = format!("{module}.weight");
            let Some(weight) = frozen.get(&name) else {
                bail!("the model has no weight `{name}` for the LoRA module `{module}`");
            };
            // For a convolution the product is taken over the flattened kernels (kohya's LoCon).
            let (up, down) = (adapter.up.as_tensor(), adapter.down.as_tensor());
            let rank = down.dim(0)?;
            let delta = (up
                .reshape((up.dim(0)?, rank))?
                .matmul(&down.reshape((rank, ()))?)?
                .reshape(weight.shape())?
                * scale)?;
            if delta.dims() != weight.dims() {
                bail!(
                    "LoRA module `{module}`: factors make {:?}, the weight is {:?}",
                    delta.dims(),
                    weight.dims()
                );
            }
            adapted.insert(name, (weight.to_dtype(dtype)? + delta.to_dtype(dtype)?)?);
        }
        Ok(VarBuilder::from_backend(
            Box::new(Adapted(adapted)),
            dtype,
            device.clone(),
        ))
    }
}

/// Weights by name, handed out as they are (no copy, no cast that would cut the graph
/// unless the dtype differs).
struct Adapted(TensorMap);

impl SimpleBackend for Adapted {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            bail!(
                "weight `{name}`: shape {:?}, expected {:?}",
                tensor.dims(),
                shape.dims()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(tensor) = self.0.get(name) else {
            bail!("the model has no weight `{name}`");
        };
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}
