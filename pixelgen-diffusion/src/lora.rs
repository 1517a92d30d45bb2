//! Merges LoRA files into a pipeline's weights before its models are built, so that
//! inference pays nothing for them: `W' = W + multiplier · scale · ΔW`, computed in f32 and
//! cast back to `W`'s dtype.
//!
//! Two file formats are read:
//! - kohya-ss / sd-scripts (A1111, Civitai): `lora_unet_<module>.lora_down.weight`,
//!   `.lora_up.weight`, optional `.alpha`; module paths have their dots turned into
//!   underscores, and SDXL UNet modules use the LDM/SGM names (`input_blocks_4_1_…`).
//! - diffusers / PEFT: `unet.<module>.lora_A.weight`, `.lora_B.weight`, with the alphas in
//!   the `lora_adapter_metadata` header entry; also the older `.lora.down.weight`,
//!   `.lora_linear_layer.down.weight` and `processor.to_q_lora.down.weight` spellings.
//!
//! Module names are never guessed from underscores: every name a LoRA may use is derived
//! from the model's own weight names, so a LoRA either lands on a real weight or is refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::sgm;

/// Tensors by name.
pub type TensorMap = HashMap<String, Tensor>;

/// A model of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Unet,
    TextEncoder,
    TextEncoder2,
    Vae,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Unet => "unet",
            Part::TextEncoder => "text encoder",
            Part::TextEncoder2 => "second text encoder",
            Part::Vae => "vae",
        })
    }
}

/// The weights of one pipeline, diffusers names, one map per part.
#[derive(Debug)]
pub struct PipelineWeights {
    pub unet: TensorMap,
    pub text_encoder: Option<TensorMap>,
    pub text_encoder_2: Option<TensorMap>,
    pub vae: TensorMap,
}

impl PipelineWeights {
    fn part(&self, part: Part) -> Option<&TensorMap> {
        match part {
            Part::Unet => Some(&self.unet),
            Part::TextEncoder => self.text_encoder.as_ref(),
            Part::TextEncoder2 => self.text_encoder_2.as_ref(),
            Part::Vae => Some(&self.vae),
        }
    }

    fn part_mut(&mut self, part: Part) -> Option<&mut TensorMap> {
        match part {
            Part::Unet => Some(&mut self.unet),
            Part::TextEncoder => self.text_encoder.as_mut(),
            Part::TextEncoder2 => self.text_encoder_2.as_mut(),
            Part::Vae => Some(&mut self.vae),
        }
    }
}

pub use super::sgm::UnetLayout;

/// The naming scheme of a LoRA file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    /// kohya-ss / sd-scripts: `lora_unet_…`, `lora_te_…`.
    Kohya,
    /// diffusers / PEFT: `unet.…`, `text_encoder.…`.
    Peft,
}

/// What [`apply_lora`] merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraReport {
    pub format: LoraFormat,
    /// Weights changed.
    pub modules: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("cannot read LoRA file {}: {source}; check the LoRA's path", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is not a valid safetensors file ({reason}); re-download it, or convert a .ckpt/.pt LoRA to .safetensors",
        path.display()
    )]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{}: tensor `{key}` is {variant}, which pixelgen cannot merge; only plain LoRA is supported (kohya-ss lora_down/lora_up, LoCon convs included, or diffusers/PEFT lora_A/lora_B): use a plain LoRA version of this file",
        path.display()
    )]
    Unsupported {
        path: PathBuf,
        variant: &'static str,
        key: String,
    },
    #[error(
        "{} holds no LoRA tensors (no lora_down/lora_up or lora_A/lora_B weights); check that it is a LoRA file",
        path.display()
    )]
    NoLoraTensors { path: PathBuf },
    #[error(
        "{}: tensor `{key}` is in no LoRA format pixelgen knows (kohya-ss `lora_unet_…`/`lora_te…` or diffusers/PEFT `unet.…`/`text_encoder….`); use a kohya-ss or diffusers LoRA",
        path.display()
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error(
        "{}: LoRA module `{key}` names no weight in the model's {part}; the LoRA is probably for another model family (e.g. an SDXL LoRA on an SD1.x model): use a LoRA made for this base model",
        path.display()
    )]
    UnknownModule {
        path: PathBuf,
        key: String,
        part: Part,
    },
    #[error(
        "{}: LoRA module `{key}` targets the {part}, which this model does not have; the LoRA is probably for another model family (e.g. an SDXL LoRA on an SD1.x model): use a LoRA made for this base model",
        path.display()
    )]
    MissingPart {
        path: PathBuf,
        key: String,
        part: Part,
    },
    #[error(
        "{}: LoRA module `{key}` changes `{weight}` by a delta of shape {lora:?}, but that weight has shape {model:?}; the LoRA is probably for another model family or base model: use a LoRA made for this one",
        path.display()
    )]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        weight: String,
        lora: Vec<usize>,
        model: Vec<usize>,
    },
    #[error(
        "{}: {reason}; the file is damaged or was written by a tool pixelgen does not know: re-export it as a plain kohya-ss or diffusers LoRA",
        path.display()
    )]
    Malformed { path: PathBuf, reason: String },
    #[error("{}: merging LoRA module `{key}` failed: {source}", path.display())]
    Merge {
        path: PathBuf,
        key: String,
        source: Box<candle_core::Error>,
    },
}

/// Merges the LoRA at `path`, scaled by `multiplier`, into `weights`. Several LoRAs are
/// applied by calling this once per file. Everything in the file is checked before any
/// weight changes, so a file that is refused leaves `weights` as they were.
pub fn apply_lora(
    weights: &mut PipelineWeights,
    layout: &UnetLayout,
    path: &Path,
    multiplier: f64,
) -> Result<LoraReport, LoraError> {
    let file = LoraFile::read(path)?;
    let (format, merges) = plan(&file, weights, layout)?;
    for merge in &merges {
        apply(weights, merge, multiplier).map_err(|source| LoraError::Merge {
            path: path.to_owned(),
            key: merge.key.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(LoraReport {
        format,
        modules: merges.len(),
    })
}

/// The tensors and the PEFT adapter configs of a LoRA file.
struct LoraFile {
    path: PathBuf,
    tensors: TensorMap,
    /// `lora_adapter_metadata`, when the file has it.
    adapter_metadata: Option<serde_json::Map<String, Value>>,
}

impl LoraFile {
    fn read(path: &Path) -> Result<Self, LoraError> {
        let invalid = |reason: String| LoraError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| LoraError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let adapter_metadata = match header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lora_adapter_metadata"))
        {
            None => None,
            Some(json) => match serde_json::from_str(json) {
                Ok(Value::Object(map)) => Some(map),
                _ => {
                    return Err(LoraError::Malformed {
                        path: path.to_owned(),
                        reason: "its `lora_adapter_metadata` header entry is not a json object"
                            .to_owned(),
                    });
                }
            },
        };
        // LoRA factors are small; they are merged on the weights' device later.
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            tensors,
            adapter_metadata,
        })
    }

    fn malformed(&self, reason: String) -> LoraError {
        LoraError::Malformed {
            path: self.path.clone(),
            reason,
        }
    }
}

/// One weight to change.
struct Merge {
    /// The LoRA module as named in the file, for messages.
    key: String,
    part: Part,
    /// The diffusers name of the weight.
    weight: String,
    up: Tensor,
    down: Tensor,
    rank: usize,
    scale: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Factor {
    Down,
    Up,
    Alpha,
}

/// Tensor-name endings of LoRA factors; the rest of the name is the module.
const FACTOR_SUFFIXES: [(&str, Factor); 11] = [
    (".lora_down.weight", Factor::Down),
    (".lora_up.weight", Factor::Up),
    (".lora_A.weight", Factor::Down),
    (".lora_B.weight", Factor::Up),
    (".lora.down.weight", Factor::Down),
    (".lora.up.weight", Factor::Up),
    (".lora_linear_layer.down.weight", Factor::Down),
    (".lora_linear_layer.up.weight", Factor::Up),
    // Attention-processor format: `attn1.processor.to_q_lora.down.weight`.
    ("_lora.down.weight", Factor::Down),
    ("_lora.up.weight", Factor::Up),
    (".alpha", Factor::Alpha),
];

/// Name prefixes that say which part a module is in and how it is spelled. `lora_te_` is
/// SD1/SD2's text encoder; SDXL files say `lora_te1_`/`lora_te2_`.
const PREFIXES: [(&str, Part, LoraFormat); 7] = [
    ("lora_unet_", Part::Unet, LoraFormat::Kohya),
    ("lora_te1_", Part::TextEncoder, LoraFormat::Kohya),
    ("lora_te2_", Part::TextEncoder2, LoraFormat::Kohya),
    ("lora_te_", Part::TextEncoder, LoraFormat::Kohya),
    ("unet.", Part::Unet, LoraFormat::Peft),
    ("text_encoder_2.", Part::TextEncoder2, LoraFormat::Peft),
    ("text_encoder.", Part::TextEncoder, LoraFormat::Peft),
];

/// The factors of one module.
#[derive(Default)]
struct Factors<'a> {
    down: Option<&'a Tensor>,
    up: Option<&'a Tensor>,
    alpha: Option<&'a Tensor>,
}

/// Resolves every module of `file` to a weight of `weights` and checks shapes.
fn plan(
    file: &LoraFile,
    weights: &PipelineWeights,
    layout: &UnetLayout,
) -> Result<(LoraFormat, Vec<Merge>), LoraError> {
    // Sorted, so that the first error reported does not depend on hash order.
    let mut modules: BTreeMap<&str, Factors> = BTreeMap::new();
    let mut tensors: Vec<(&String, &Tensor)> = file.tensors.iter().collect();
    tensors.sort_by_key(|&(key, _)| key);
    for (key, tensor) in tensors {
        if let Some(variant) = unsupported_variant(key) {
            return Err(LoraError::Unsupported {
                path: file.path.clone(),
                variant,
                key: key.clone(),
            });
        }
        let Some((module, factor)) = FACTOR_SUFFIXES
            .iter()
            .find_map(|&(suffix, factor)| Some((key.strip_suffix(suffix)?, factor)))
        else {
            return Err(LoraError::UnknownKey {
                path: file.path.clone(),
                key: key.clone(),
            });
        };
        let entry = modules.entry(module).or_default();
        match factor {
            Factor::Down => entry.down = Some(tensor),
            Factor::Up => entry.up = Some(tensor),
            Factor::Alpha => entry.alpha = Some(tensor),
        }
    }

    let mut resolver = Resolver {
        weights,
        layout,
        kohya: HashMap::new(),
    };
    let mut format = None;
    let mut merges: Vec<Merge> = Vec::new();
    // Target weight → (index in `merges`, reached through an SGM name).
    let mut targets: HashMap<(Part, String), (usize, bool)> = HashMap::new();
    for (key, factors) in modules {
        let (down, up) = match (factors.down, factors.up) {
            (Some(down), Some(up)) => (down, up),
            // kohya files may carry an alpha for a module they hold no factors for.
            (None, None) => continue,
            (Some(_), None) => {
                return Err(file.malformed(format!("module `{key}` has no up factor")));
            }
            (None, Some(_)) => {
                return Err(file.malformed(format!("module `{key}` has no down factor")));
            }
        };
        let Some(&(prefix, part, naming)) = PREFIXES.iter().find(|(p, ..)| key.starts_with(p))
        else {
            return Err(LoraError::UnknownKey {
                path: file.path.clone(),
                key: key.to_owned(),
            });
        };
        if *format.get_or_insert(naming) != naming {
            return Err(file.malformed(
                "it mixes kohya-ss (`lora_unet_…`) and diffusers (`unet.…`) names".to_owned(),
            ));
        }
        let map = weights.part(part).ok_or_else(|| LoraError::MissingPart {
            path: file.path.clone(),
            key: key.to_owned(),
            part,
        })?;
        let name = &key[prefix.len()..];
        let (module, via_sgm) = match naming {
            LoraFormat::Kohya => resolver.kohya(part, name).map_err(|ambiguous| {
                if ambiguous {
                    file.malformed(format!(
                        "module `{key}` matches several weights of the model's {part}"
                    ))
                } else {
                    LoraError::UnknownModule {
                        path: file.path.clone(),
                        key: key.to_owned(),
                        part,
                    }
                }
            })?,
            LoraFormat::Peft => (
                peft_module(part, name, map).ok_or_else(|| LoraError::UnknownModule {
                    path: file.path.clone(),
                    key: key.to_owned(),
                    part,
                })?,
                false,
            ),
        };
        let weight = format!("{module}.weight");
        let target = map.get(&weight).ok_or_else(|| LoraError::UnknownModule {
            path: file.path.clone(),
            key: key.to_owned(),
            part,
        })?;
        let (rank, delta_shape) = delta_shape(down, up).ok_or_else(|| {
            file.malformed(format!(
                "the factors of module `{key}` do not fit together: down {:?}, up {:?}",
                down.dims(),
                up.dims()
            ))
        })?;
        if squeeze(&delta_shape) != squeeze(target.dims()) {
            return Err(LoraError::ShapeMismatch {
                path: file.path.clone(),
                key: key.to_owned(),
                weight,
                lora: delta_shape,
                model: target.dims().to_vec(),
            });
        }
        let scale = match factors.alpha {
            Some(alpha) => {
                let alpha = scalar(alpha).ok_or_else(|| {
                    file.malformed(format!("the alpha of module `{key}` is not a number"))
                })?;
                alpha / rank as f64
            }
            None => match naming {
                // kohya: no alpha means alpha = rank.
                LoraFormat::Kohya => 1.0,
                LoraFormat::Peft => peft_scale(file, part, &name_in_part(part, name), rank)?,
            },
        };
        let merge = Merge {
            key: key.to_owned(),
            part,
            weight,
            up: up.clone(),
            down: down.clone(),
            rank,
            scale,
        };
        // Like diffusers, a module named both ways counts once, by its diffusers name.
        match targets.get(&(part, merge.weight.clone())) {
            None => {
                targets.insert((part, merge.weight.clone()), (merges.len(), via_sgm));
                merges.push(merge);
            }
            Some(&(index, true)) if !via_sgm => {
                targets.insert((part, merge.weight.clone()), (index, false));
                merges[index] = merge;
            }
            Some(&(_, previous_sgm)) if via_sgm && !previous_sgm => {}
            Some(&(index, _)) => {
                return Err(file.malformed(format!(
                    "modules `{}` and `{key}` both change `{}`",
                    merges[index].key, merge.weight
                )));
            }
        }
    }
    match format {
        Some(format) if !merges.is_empty() => Ok((format, merges)),
        _ => Err(LoraError::NoLoraTensors {
            path: file.path.clone(),
        }),
    }
}

/// Finds the weights that kohya-ss names refer to.
struct Resolver<'a> {
    weights: &'a PipelineWeights,
    layout: &'a UnetLayout,
    /// Per part: kohya name (no prefix) → module, `via_sgm`; `None` where two modules
    /// share a kohya name.
    kohya: HashMap<Part, HashMap<String, Option<(String, bool)>>>,
}

impl Resolver<'_> {
    /// The module `name` refers to and whether it was named in the SGM layout; `Err(true)`
    /// when the name is ambiguous, `Err(false)` when it names nothing.
    fn kohya(&mut self, part: Part, name: &str) -> Result<(String, bool), bool> {
        let (weights, layout) = (self.weights, self.layout);
        let index = self
            .kohya
            .entry(part)
            .or_insert_with(|| kohya_index(weights, part, layout));
        match index.get(name) {
            Some(Some(found)) => Ok(found.clone()),
            Some(None) => Err(true),
            None => Err(false),
        }
    }
}

/// Every kohya-ss name of every weight-carrying module of `part`.
fn kohya_index(
    weights: &PipelineWeights,
    part: Part,
    layout: &UnetLayout,
) -> HashMap<String, Option<(String, bool)>> {
    let mut index: HashMap<String, Option<(String, bool)>> = HashMap::new();
    let mut add = |kohya: String, module: &str, via_sgm: bool| {
        index
            .entry(kohya)
            .and_modify(|found| {
                if found.as_ref().is_some_and(|(m, _)| m != module) {
                    *found = None;
                }
            })
            .or_insert_with(|| Some((module.to_owned(), via_sgm)));
    };
    let Some(map) = weights.part(part) else {
        return HashMap::new();
    };
    for name in map.keys() {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        add(module.replace('.', "_"), module, false);
        match part {
            Part::Unet => {
                if let Some(sgm) = sgm::diffusers_unet_to_sgm(module, layout) {
                    add(sgm.replace('.', "_"), module, true);
                }
            }
            // transformers ≥ 5.6 saves CLIPTextModel without its `text_model.` level;
            // kohya names always have it.
            Part::TextEncoder | Part::TextEncoder2 if !module.starts_with("text_model.") => {
                add(
                    format!("text_model_{}", module.replace('.', "_")),
                    module,
                    false,
                );
            }
            _ => {}
        }
    }
    index
}

/// The module a diffusers-format name (part prefix removed) refers to, if `map` has it.
fn peft_module(part: Part, name: &str, map: &TensorMap) -> Option<String> {
    let module = name_in_part(part, name);
    let candidates = [
        Some(module.clone()),
        // Folders saved by older and newer transformers differ in the `text_model.` level.
        module.strip_prefix("text_model.").map(str::to_owned),
        (part != Part::Unet).then(|| format!("text_model.{module}")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|m| map.contains_key(&format!("{m}.weight")))
}

/// The diffusers module path of a diffusers-format LoRA module name, undoing the
/// attention-processor spelling (`attn1.processor.to_out_lora` → `attn1.to_out.0`, or
/// `self_attn.to_q_lora` → `self_attn.q_proj` in a text encoder).
fn name_in_part(part: Part, name: &str) -> String {
    let name = name.replace(".processor.", ".");
    let Some((parent, last)) = name.rsplit_once('.') else {
        return name;
    };
    let renamed = match (part, last) {
        (Part::Unet, "to_out") => "to_out.0",
        (Part::TextEncoder | Part::TextEncoder2, "to_q") => "q_proj",
        (Part::TextEncoder | Part::TextEncoder2, "to_k") => "k_proj",
        (Part::TextEncoder | Part::TextEncoder2, "to_v") => "v_proj",
        (Part::TextEncoder | Part::TextEncoder2, "to_out") => "out_proj",
        _ => return name,
    };
    format!("{parent}.{renamed}")
}

/// The scale PEFT gives a module without an `.alpha` tensor: `lora_alpha / r` from the
/// file's adapter metadata (per-module `alpha_pattern` first), or 1 when there is none.
fn peft_scale(file: &LoraFile, part: Part, module: &str, rank: usize) -> Result<f64, LoraError> {
    let Some(metadata) = &file.adapter_metadata else {
        return Ok(1.0);
    };
    let prefix = match part {
        Part::Unet => "unet.",
        Part::TextEncoder => "text_encoder.",
        Part::TextEncoder2 => "text_encoder_2.",
        Part::Vae => "vae.",
    };
    // Pipeline files prefix each config entry with the part (`unet.lora_alpha`); files
    // saved from a single model do not.
    let get = |field: &str| {
        metadata
            .get(&format!("{prefix}{field}"))
            .or_else(|| metadata.get(field))
    };
    let bad =
        |field: &str| file.malformed(format!("its adapter metadata has a bad `{prefix}{field}`"));
    let pattern_alpha = match get("alpha_pattern") {
        None | Some(Value::Null) => None,
        Some(Value::Object(patterns)) => patterns
            .iter()
            .find(|(pattern, _)| peft_pattern_matches(pattern, module))
            .map(|(_, alpha)| alpha.as_f64().ok_or_else(|| bad("alpha_pattern")))
            .transpose()?,
        Some(_) => return Err(bad("alpha_pattern")),
    };
    let alpha = match pattern_alpha {
        Some(alpha) => alpha,
        None => match get("lora_alpha") {
            None | Some(Value::Null) => return Ok(1.0),
            Some(alpha) => alpha.as_f64().ok_or_else(|| bad("lora_alpha"))?,
        },
    };
    let rslora = get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let rank = rank as f64;
    Ok(if rslora {
        alpha / rank.sqrt()
    } else {
        alpha / rank
    })
}

/// PEFT's pattern rule (`re.match(rf"(.*\.)?({pattern})$", module)`), for the patterns
/// diffusers writes: module paths, optionally anchored with `^`. Their dots, regex
/// wildcards, only ever meet dots.
fn peft_pattern_matches(pattern: &str, module: &str) -> bool {
    match pattern.strip_prefix('^') {
        Some(anchored) => module == anchored,
        None => {
            module == pattern
                || module
                    .strip_suffix(pattern)
                    .is_some_and(|head| head.ends_with('.'))
        }
    }
}

/// The rank and the shape of `up @ down`: down is `[r, in, (kh, kw)]`, up `[out, r, (1, 1)]`.
fn delta_shape(down: &Tensor, up: &Tensor) -> Option<(usize, Vec<usize>)> {
    let (&rank, down_rest) = down.dims().split_first()?;
    let (&out, up_rest) = up.dims().split_first()?;
    let (&up_rank, up_kernel) = up_rest.split_first()?;
    if rank == 0 || down_rest.is_empty() || up_rank != rank || up_kernel.iter().any(|&d| d != 1) {
        return None;
    }
    Some((rank, [&[out], down_rest].concat()))
}

/// A shape without trailing 1×1 kernel dimensions, so that a linear delta fits a 1×1 conv
/// (SD1's `proj_in`) and the other way round.
fn squeeze(shape: &[usize]) -> &[usize] {
    let mut shape = shape;
    while shape.len() > 2 && shape.last() == Some(&1) {
        shape = &shape[..shape.len() - 1];
    }
    shape
}

/// The value of a one-element tensor.
fn scalar(t: &Tensor) -> Option<f64> {
    if t.elem_count() != 1 {
        return None;
    }
    let v: Vec<f64> = t
        .flatten_all()
        .ok()?
        .to_dtype(DType::F64)
        .ok()?
        .to_vec1()
        .ok()?;
    v.first().copied().filter(|v| v.is_finite())
}

fn apply(weights: &mut PipelineWeights, merge: &Merge, multiplier: f64) -> candle_core::Result<()> {
    let Some(map) = weights.part_mut(merge.part) else {
        return Ok(()); // `plan` found the part; it cannot have gone.
    };
    let Some(w) = map.get(&merge.weight) else {
        return Ok(());
    };
    let device = w.device();
    let rank = merge.rank;
    let up = merge.up.to_device(device)?.to_dtype(DType::F32)?;
    let up = up.reshape((up.elem_count() / rank, rank))?;
    let down = merge.down.to_device(device)?.to_dtype(DType::F32)?;
    let down = down.reshape((rank, down.elem_count() / rank))?;
    let delta = up.matmul(&down)?.reshape(w.shape())?;
    let merged = (w.to_dtype(DType::F32)? + delta.affine(multiplier * merge.scale, 0.0)?)?
        .to_dtype(w.dtype())?;
    map.insert(merge.weight.clone(), merged);
    Ok(())
}

/// The LoRA variant a tensor belongs to when pixelgen cannot merge it.
fn unsupported_variant(key: &str) -> Option<&'static str> {
    if key.starts_with("bundle_emb.") {
        return Some("a textual-inversion embedding bundled in the LoRA (bundle_emb)");
    }
    // The variants show in the last two components (`module.hada_w1_a`,
    // `module.lora_mid.weight`); module paths never look like them.
    let mut parts = key.rsplit('.');
    let last = parts.next().unwrap_or(key);
    let before = parts.next().unwrap_or("");
    let any = |test: &dyn Fn(&str) -> bool| test(last) || test(before);
    if any(&|c| c.starts_with("hada_")) {
        Some("LoHa (hada_w1_a/hada_w2_b)")
    } else if any(&|c| c.starts_with("lokr_")) {
        Some("LoKr (lokr_w1/lokr_w2)")
    } else if any(&|c| c == "dora_scale" || c == "lora_magnitude_vector") {
        Some("DoRA (dora_scale / lora_magnitude_vector)")
    } else if any(&|c| c == "lora_mid") {
        Some("LoCon with CP decomposition (lora_mid)")
    } else if any(&|c| c.starts_with("oft_") || c.starts_with("boft_")) {
        Some("OFT/BOFT")
    } else if any(&|c| c == "on_input" || c.starts_with("ia3_")) {
        Some("IA3")
    } else if last == "diff" || last == "diff_b" {
        Some("a full weight difference (.diff)")
    } else if any(&|c| c == "w_norm" || c == "b_norm") {
        Some("a norm-layer difference (w_norm/b_norm)")
    } else if last == "weight" && matches!(before, "a1" | "a2" | "b1" | "b2") {
        Some("GLoRA (a1/a2/b1/b2)")
    } else if any(&|c| c.starts_with("lora_embedding_")) {
        Some("a LoRA on token embeddings (lora_embedding_A/B)")
    } else if last == "bias" && matches!(before, "lora_B" | "lora_up") {
        Some("a LoRA with bias terms (lora_B.bias)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn t(data: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// A LoRA file in the temp dir, deleted on drop.
    struct File(PathBuf);

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp_path() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "pixelgen-lora-{}-{n}.safetensors",
            std::process::id()
        ))
    }

    fn file(tensors: &[(&str, Tensor)], metadata: Option<&str>) -> File {
        let path = temp_path();
        let metadata = metadata
            .map(|json| HashMap::from([("lora_adapter_metadata".to_owned(), json.to_owned())]));
        let data = tensors.iter().map(|(k, v)| (k.to_string(), v));
        safetensors::serialize_to_file(data, metadata, &path).unwrap();
        File(path)
    }

    const TO_Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    const TE_Q: &str = "text_model.encoder.layers.0.self_attn.q_proj";

    fn sd1_layout() -> UnetLayout {
        UnetLayout {
            layers_per_block: 2,
            down_has_attention: vec![true, true, true, false],
        }
    }

    fn sdxl_layout() -> UnetLayout {
        UnetLayout {
            layers_per_block: 2,
            down_has_attention: vec![false, true, true],
        }
    }

    fn weights(unet: &[(&str, Tensor)], te: &[(&str, Tensor)]) -> PipelineWeights {
        let map = |ts: &[(&str, Tensor)]| -> TensorMap {
            ts.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        PipelineWeights {
            unet: map(unet),
            text_encoder: Some(map(te)),
            text_encoder_2: None,
            vae: TensorMap::new(),
        }
    }

    fn sd1_weights() -> PipelineWeights {
        weights(
            &[(
                &format!("{TO_Q}.weight"),
                t(&[1., 2., 3., 4., 5., 6.], &[2, 3]),
            )],
            &[(&format!("{TE_Q}.weight"), t(&[0.; 4], &[2, 2]))],
        )
    }

    #[test]
    fn kohya_merge_is_w_plus_multiplier_alpha_over_rank_up_down() {
        let lora = file(
            &[
                // alpha 1, rank 2: scale 0.5.
                (
                    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
                    t(&[1., 0., 1., 0., 1., 0.], &[2, 3]),
                ),
                (
                    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
                    t(&[1., 2., 3., 4.], &[2, 2]),
                ),
                (
                    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
                    t(&[1.], &[]),
                ),
                // No alpha: alpha = rank, scale 1.
                (
                    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                    t(&[1., 1.], &[1, 2]),
                ),
                (
                    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
                    t(&[2., 3.], &[2, 1]),
                ),
            ],
            None,
        );
        let mut w = sd1_weights();
        let report = apply_lora(&mut w, &sd1_layout(), &lora.0, 2.0).unwrap();
        assert_eq!(
            report,
            LoraReport {
                format: LoraFormat::Kohya,
                modules: 2
            }
        );
        // up @ down = [[1, 2, 1], [3, 4, 3]]; W + 2 · 0.5 · ΔW.
        assert_eq!(
            values(&w.unet[&format!("{TO_Q}.weight")]),
            [2., 4., 4., 7., 9., 9.]
        );
        let te = w.text_encoder.as_ref().unwrap();
        assert_eq!(values(&te[&format!("{TE_Q}.weight")]), [4., 4., 6., 6.]);

        // A second application adds again: several LoRAs are several calls.
        apply_lora(&mut w, &sd1_layout(), &lora.0, -1.0).unwrap();
        assert_eq!(
            values(&w.unet[&format!("{TO_Q}.weight")]),
            [1.5, 3., 3.5, 5.5, 7., 7.5]
        );
    }

    #[test]
    fn kohya_sgm_names_and_locon_convs() {
        let attn = "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight";
        let down = "down_blocks.0.downsamplers.0.conv.weight";
        let mut w = weights(
            &[
                (attn, t(&[0.; 4], &[2, 2])),
                (down, t(&[0.; 18], &[2, 1, 3, 3])),
            ],
            &[],
        );
        let kernel: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let lora = file(
            &[
                (
                    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_down.weight",
                    t(&[1., 2.], &[1, 2]),
                ),
                (
                    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_up.weight",
                    t(&[1., 10.], &[2, 1]),
                ),
                // The downsampler of level 0 is `input_blocks.3.0.op` in SDXL's layout.
                (
                    "lora_unet_input_blocks_3_0_op.lora_down.weight",
                    t(&kernel, &[1, 1, 3, 3]),
                ),
                (
                    "lora_unet_input_blocks_3_0_op.lora_up.weight",
                    t(&[1., -2.], &[2, 1, 1, 1]),
                ),
            ],
            None,
        );
        let report = apply_lora(&mut w, &sdxl_layout(), &lora.0, 1.0).unwrap();
        assert_eq!(report.modules, 2);
        assert_eq!(values(&w.unet[attn]), [1., 2., 10., 20.]);
        let expected: Vec<f32> = kernel
            .iter()
            .copied()
            .chain(kernel.iter().map(|v| -2. * v))
            .collect();
        assert_eq!(values(&w.unet[down]), expected);
    }

    #[test]
    fn linear_factors_fit_one_by_one_convs_and_back() {
        // SD1's proj_in is a 1×1 conv; some trainers store 2-D factors for it.
        let conv = "down_blocks.0.attentions.0.proj_in.weight";
        let linear = "down_blocks.0.attentions.0.proj_out.weight";
        let mut w = weights(
            &[
                (conv, t(&[0.; 4], &[2, 2, 1, 1])),
                (linear, t(&[0.; 4], &[2, 2])),
            ],
            &[],
        );
        let lora = file(
            &[
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                    t(&[1., 2.], &[1, 2]),
                ),
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                    t(&[1., 3.], &[2, 1]),
                ),
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_out.lora_down.weight",
                    t(&[1., 2.], &[1, 2, 1, 1]),
                ),
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_out.lora_up.weight",
                    t(&[1., 3.], &[2, 1, 1, 1]),
                ),
            ],
            None,
        );
        apply_lora(&mut w, &sd1_layout(), &lora.0, 1.0).unwrap();
        assert_eq!(w.unet[conv].dims(), [2, 2, 1, 1]);
        assert_eq!(values(&w.unet[conv]), [1., 2., 3., 6.]);
        assert_eq!(w.unet[linear].dims(), [2, 2]);
        assert_eq!(values(&w.unet[linear]), [1., 2., 3., 6.]);
    }

    #[test]
    fn merges_in_f32_and_keeps_the_weight_dtype() {
        let name = format!("{TO_Q}.weight");
        let w16 = t(&[1., 2., 3., 4.], &[2, 2]).to_dtype(DType::F16).unwrap();
        let mut w = weights(&[(&name, w16)], &[]);
        let lora = file(
            &[
                (
                    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
                    t(&[0.5, 0.25], &[1, 2]).to_dtype(DType::BF16).unwrap(),
                ),
                (
                    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
                    t(&[2., 4.], &[2, 1]).to_dtype(DType::BF16).unwrap(),
                ),
            ],
            None,
        );
        let report = apply_lora(&mut w, &sd1_layout(), &lora.0, 1.0).unwrap();
        assert_eq!(
            report,
            LoraReport {
                format: LoraFormat::Peft,
                modules: 1
            }
        );
        assert_eq!(w.unet[&name].dtype(), DType::F16);
        assert_eq!(values(&w.unet[&name]), [2., 2.5, 5., 5.]);
    }

    #[test]
    fn peft_alphas_come_from_the_adapter_metadata() {
        let k = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k";
        let mut w = weights(
            &[
                (&format!("{TO_Q}.weight"), t(&[0.; 4], &[2, 2])),
                (&format!("{k}.weight"), t(&[0.; 4], &[2, 2])),
            ],
            &[(&format!("{TE_Q}.weight"), t(&[0.; 4], &[2, 2]))],
        );
        let one = |name: &str| {
            [
                (format!("{name}.lora_A.weight"), t(&[1., 1.], &[1, 2])),
                (format!("{name}.lora_B.weight"), t(&[1., 1.], &[2, 1])),
            ]
        };
        let tensors: Vec<(String, Tensor)> = [
            format!("unet.{TO_Q}"),
            format!("unet.{k}"),
            format!("text_encoder.{TE_Q}"),
        ]
        .iter()
        .flat_map(|n| one(n))
        .collect();
        let tensors: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        // As diffusers writes it: per-part prefixes; `to_k` has its own alpha. The text
        // encoder's entries are absent, so its scale is 1.
        let metadata = r#"{"unet.r": 1, "unet.lora_alpha": 4, "unet.alpha_pattern": {"to_k": 0.5}, "unet.rank_pattern": {}, "unet.use_rslora": false}"#;
        let lora = file(&tensors, Some(metadata));
        apply_lora(&mut w, &sd1_layout(), &lora.0, 1.0).unwrap();
        assert_eq!(values(&w.unet[&format!("{TO_Q}.weight")]), [4.; 4]);
        assert_eq!(values(&w.unet[&format!("{k}.weight")]), [0.5; 4]);
        let te = w.text_encoder.as_ref().unwrap();
        assert_eq!(values(&te[&format!("{TE_Q}.weight")]), [1.; 4]);
    }

    #[test]
    fn peft_patterns_match_like_peft() {
        assert!(peft_pattern_matches("to_k", "down_blocks.0.to_k"));
        assert!(peft_pattern_matches("to_k", "to_k"));
        assert!(!peft_pattern_matches("to_k", "down_blocks.0.xto_k"));
        assert!(peft_pattern_matches("0.to_k", "down_blocks.0.to_k"));
        assert!(peft_pattern_matches(
            "^down_blocks.0.to_k",
            "down_blocks.0.to_k"
        ));
        assert!(!peft_pattern_matches("^0.to_k", "down_blocks.0.to_k"));
    }

    #[test]
    fn old_diffusers_spellings() {
        let out = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight";
        let mut w = weights(
            &[(out, t(&[0.; 4], &[2, 2]))],
            // A CLIP saved without the `text_model.` level still takes `text_model.` names.
            &[(
                "encoder.layers.0.self_attn.q_proj.weight",
                t(&[0.; 4], &[2, 2]),
            )],
        );
        let lora = file(
            &[
                (
                    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight",
                    t(&[1., 0.], &[1, 2]),
                ),
                (
                    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
                    t(&[1., 2.], &[2, 1]),
                ),
                (
                    "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight",
                    t(&[0., 1.], &[1, 2]),
                ),
                (
                    "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight",
                    t(&[3., 4.], &[2, 1]),
                ),
            ],
            None,
        );
        assert_eq!(
            apply_lora(&mut w, &sd1_layout(), &lora.0, 1.0)
                .unwrap()
                .modules,
            2
        );
        assert_eq!(values(&w.unet[out]), [1., 0., 2., 0.]);
        let te = w.text_encoder.as_ref().unwrap();
        assert_eq!(
            values(&te["encoder.layers.0.self_attn.q_proj.weight"]),
            [0., 3., 0., 4.]
        );
    }

    #[test]
    fn names_unsupported_variants() {
        let cases = [
            ("lora_unet_x.hada_w1_a", "loha"),
            ("lora_unet_x.lokr_w1", "lokr"),
            ("lora_unet_x.dora_scale", "dora"),
            ("unet.x.lora_magnitude_vector", "dora"),
            ("lora_unet_x.lora_mid.weight", "lora_mid"),
            ("lora_unet_x.diff", "full weight difference"),
            ("lora_unet_x.oft_blocks", "oft"),
            ("unet.x.boft_R", "oft"),
            ("lora_unet_x.on_input", "ia3"),
            ("unet.x.ia3_l", "ia3"),
            ("lora_unet_x.w_norm", "norm"),
            ("lora_unet_x.a1.weight", "glora"),
            ("bundle_emb.cat.string_to_param.*", "embedding"),
        ];
        for (key, variant) in cases {
            let found = unsupported_variant(key).unwrap_or_else(|| panic!("{key}"));
            assert!(found.to_lowercase().contains(variant), "{key}: {found}");
        }
        for key in [
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.lora_A.weight",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha",
        ] {
            assert_eq!(unsupported_variant(key), None, "{key}");
        }

        let lora = file(&[("lora_unet_x.hada_w1_a", t(&[1.], &[1, 1]))], None);
        let err = apply_lora(&mut sd1_weights(), &sd1_layout(), &lora.0, 1.0).unwrap_err();
        assert!(
            matches!(err, LoraError::Unsupported { variant, .. } if variant.starts_with("LoHa"))
        );
        let message = err.to_string();
        assert!(
            message.contains("lora_unet_x.hada_w1_a")
                && message.contains("only plain LoRA is supported"),
            "{message}"
        );
    }

    fn pair(module: &str, down: Tensor, up: Tensor) -> [(String, Tensor); 2] {
        [
            (format!("{module}.lora_down.weight"), down),
            (format!("{module}.lora_up.weight"), up),
        ]
    }

    fn refusal(tensors: &[(String, Tensor)]) -> LoraError {
        let tensors: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let lora = file(&tensors, None);
        let mut w = sd1_weights();
        let before = w.unet[&format!("{TO_Q}.weight")].id();
        let err = apply_lora(&mut w, &sd1_layout(), &lora.0, 1.0).unwrap_err();
        // Checked before anything changed.
        assert_eq!(w.unet[&format!("{TO_Q}.weight")].id(), before);
        let message = err.to_string();
        assert!(message.contains(&lora.0.display().to_string()), "{message}");
        // One line, no final full stop (it continues a cargo error line).
        assert!(
            !message.contains('\n') && !message.ends_with('.'),
            "{message}"
        );
        err
    }

    #[test]
    fn refuses_loras_for_other_models() {
        let good = pair(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            t(&[1.; 3], &[1, 3]),
            t(&[1.; 2], &[2, 1]),
        );
        // An SDXL-only module (SD1 has attention in down level 0, SDXL does not, and
        // SD1 has no second transformer block).
        let sdxl_only = pair(
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q",
            t(&[1.; 3], &[1, 3]),
            t(&[1.; 2], &[2, 1]),
        );
        let tensors: Vec<_> = good.iter().chain(&sdxl_only).cloned().collect();
        let err = refusal(&tensors);
        assert!(
            matches!(&err, LoraError::UnknownModule { key, part: Part::Unet, .. }
            if key == "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q")
        );
        assert!(err.to_string().contains("another model family"), "{err}");

        let wide = pair(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            t(&[1.; 5], &[1, 5]),
            t(&[1.; 2], &[2, 1]),
        );
        let err = refusal(&wide);
        assert!(matches!(&err, LoraError::ShapeMismatch { lora, model, .. }
            if lora == &[2, 5] && model == &[2, 3]));
        assert!(
            err.to_string().contains("[2, 5]") && err.to_string().contains("[2, 3]"),
            "{err}"
        );

        let te2 = pair(
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
            t(&[1.; 2], &[1, 2]),
            t(&[1.; 2], &[2, 1]),
        );
        let err = refusal(&te2);
        assert!(matches!(
            err,
            LoraError::MissingPart {
                part: Part::TextEncoder2,
                ..
            }
        ));
    }

    #[test]
    fn refuses_broken_files() {
        let only_down = [(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
                .to_owned(),
            t(&[1.; 3], &[1, 3]),
        )];
        assert!(matches!(refusal(&only_down), LoraError::Malformed { .. }));
        let alpha_only = [("lora_unet_x.alpha".to_owned(), t(&[1.], &[]))];
        assert!(matches!(
            refusal(&alpha_only),
            LoraError::NoLoraTensors { .. }
        ));
        assert!(matches!(refusal(&[]), LoraError::NoLoraTensors { .. }));
        let stray = [(
            "model.diffusion_model.out.2.weight".to_owned(),
            t(&[1.], &[1]),
        )];
        assert!(matches!(refusal(&stray), LoraError::UnknownKey { .. }));
        let rank_mismatch = pair(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            t(&[1.; 6], &[2, 3]),
            t(&[1.; 2], &[2, 1]),
        );
        assert!(matches!(
            refusal(&rank_mismatch),
            LoraError::Malformed { .. }
        ));

        let garbage = File(temp_path());
        std::fs::write(&garbage.0, b"not a safetensors file").unwrap();
        let err = apply_lora(&mut sd1_weights(), &sd1_layout(), &garbage.0, 1.0).unwrap_err();
        assert!(matches!(err, LoraError::Invalid { .. }), "{err}");
        let missing = temp_path();
        let err = apply_lora(&mut sd1_weights(), &sd1_layout(), &missing, 1.0).unwrap_err();
        assert!(matches!(err, LoraError::Read { .. }), "{err}");
        assert!(err.to_string().contains(&missing.display().to_string()));
    }

    #[test]
    fn layout_from_a_diffusers_config() {
        let config = serde_json::json!({
            "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        });
        assert_eq!(UnetLayout::from_unet_config(&config), Some(sdxl_layout()));
        let per_level = serde_json::json!({"layers_per_block": [2, 2], "down_block_types": []});
        assert_eq!(UnetLayout::from_unet_config(&per_level), None);
    }
}
