//! Which weight each tensor of a LoRA file changes: kohya and PEFT/diffusers key forms resolved to the diffusers names of the pipeline's weights, factor shapes checked, alpha and PEFT ranks turned into scales, and the variants pixelgen cannot merge named.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Factor {
    Down,
    Up,
    Alpha,
    /// DoRA's per-output magnitude (PEFT `use_dora`).
    Magnitude,
}

/// Tensor-name endings of LoRA factors; the rest of the name is the module.
const FACTOR_SUFFIXES: [(&str, Factor); 13] = [
    // peft writes `…lora_magnitude_vector`; the parameter (and what diffusers loads) is
    // `…lora_magnitude_vector.weight`.
    (".lora_magnitude_vector.weight", Factor::Magnitude),
    (".lora_magnitude_vector", Factor::Magnitude),
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
    magnitude: Option<&'a Tensor>,
}

/// Resolves every module of `file` to a weight of `weights` and checks shapes.
pub(super) fn plan(
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
            Factor::Magnitude => entry.magnitude = Some(tensor),
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
            (None, None) if factors.magnitude.is_none() => continue,
            (None, None) => {
                return Err(file.malformed(format!(
                    "module `{key}` has a DoRA magnitude but no factors"
                )));
            }
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
        let magnitude = match factors.magnitude {
            None => None,
            Some(_) if naming == LoraFormat::Kohya => {
                return Err(LoraError::Unsupported {
                    path: file.path.clone(),
                    variant: "DoRA in kohya-ss naming (only PEFT/diffusers DoRA files are read)",
                    key: key.to_owned(),
                });
            }
            // One magnitude per output channel of the weight.
            Some(m) if m.elem_count() == target.dims()[0] => Some(m.clone()),
            Some(m) => {
                return Err(file.malformed(format!(
                    "the DoRA magnitude of module `{key}` has {} values for {} output channels",
                    m.elem_count(),
                    target.dims()[0]
                )));
            }
        };
        let merge = Merge {
            key: key.to_owned(),
            part,
            weight,
            up: up.clone(),
            down: down.clone(),
            rank,
            scale,
            magnitude,
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
            // kohya names made from transformers < 5.6 module paths have the `text_model`
            // level (`lora_te_text_model_encoder_layers_0_…`); names made from later ones
            // do not (`lora_te_encoder_layers_0_…`). Both name the same module, whichever
            // way the model's own weights are saved.
            Part::TextEncoder | Part::TextEncoder2 => match module.strip_prefix("text_model.") {
                Some(inner) => add(inner.replace('.', "_"), module, false),
                None => add(
                    format!("text_model_{}", module.replace('.', "_")),
                    module,
                    false,
                ),
            },
            Part::Vae => {}
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
pub(super) fn peft_pattern_matches(pattern: &str, module: &str) -> bool {
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

/// The LoRA variant a tensor belongs to when pixelgen cannot merge it.
pub(super) fn unsupported_variant(key: &str) -> Option<&'static str> {
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
    } else if any(&|c| c == "dora_scale") {
        Some("kohya/LyCORIS DoRA (dora_scale); PEFT DoRA files (lora_magnitude_vector) are read")
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
