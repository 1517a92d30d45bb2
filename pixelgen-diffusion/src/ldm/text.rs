//! The text encoders of a single file: CLIP in transformers' layout (SD1, SDXL's first) and OpenCLIP (SD2, SDXL's second) renamed to transformers' CLIPTextModel, with their configs.

use super::*;

/// A CLIP text model stored in transformers' layout (SD1, SDXL's first encoder).
pub(super) fn hf_clip(
    src: TensorMap,
    component: Component,
) -> Result<(TensorMap, Value), LdmError> {
    let mut clip = TensorMap::new();
    for (name, tensor) in src {
        // Checkpoints made with old transformers lack the `text_model.` level.
        let name = if name.starts_with("text_model.") {
            name
        } else {
            format!("text_model.{name}")
        };
        // `position_ids` is a buffer, not a weight (newer transformers do not save it); a
        // projection or logit scale, which some exports keep, is unused by SD.
        let unused = [
            "embeddings.position_ids",
            "text_projection.weight",
            "logit_scale",
        ];
        if !unused.iter().any(|u| name == format!("text_model.{u}")) {
            clip.insert(name, tensor);
        }
    }
    let config = clip_config(&clip, component, "quick_gelu", false)?;
    Ok((clip, config))
}

/// An OpenCLIP text model (SD2's ViT-H, SDXL's bigG) renamed to transformers' CLIP layout.
/// SD2 uses the penultimate layer's output, so like diffusers its last layer is dropped;
/// SDXL's second encoder keeps every layer and its projection.
pub(super) fn open_clip_model(
    src: TensorMap,
    component: Component,
    with_projection: bool,
) -> Result<(TensorMap, Value), LdmError> {
    let s = Shapes {
        component,
        map: &src,
    };
    let layers = s.count("transformer.resblocks.");
    let tensor_error = |source| LdmError::Tensor {
        component,
        source: Box::new(source),
    };
    let mut clip = TensorMap::new();
    let mut unexpected = vec![];
    for (name, tensor) in &src {
        let (new_name, tensor) = match name.as_str() {
            "token_embedding.weight" => (
                "text_model.embeddings.token_embedding.weight".to_owned(),
                tensor.clone(),
            ),
            "positional_embedding" => (
                "text_model.embeddings.position_embedding.weight".to_owned(),
                tensor.clone(),
            ),
            "ln_final.weight" => (
                "text_model.final_layer_norm.weight".to_owned(),
                tensor.clone(),
            ),
            "ln_final.bias" => (
                "text_model.final_layer_norm.bias".to_owned(),
                tensor.clone(),
            ),
            // OpenCLIP multiplies `x @ P`; a linear layer stores `Pᵀ`.
            "text_projection" if with_projection => (
                "text_projection.weight".to_owned(),
                tensor
                    .t()
                    .and_then(|t| t.contiguous())
                    .map_err(tensor_error)?,
            ),
            "text_projection.weight" if with_projection => {
                ("text_projection.weight".to_owned(), tensor.clone())
            }
            // SD2 has no use for the projection; neither model for the contrastive scale.
            "text_projection" | "text_projection.weight" | "logit_scale" | "attn_mask" => continue,
            _ => {
                let Some((layer, rest)) = name
                    .strip_prefix("transformer.resblocks.")
                    .and_then(|r| r.split_once('.'))
                    .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)))
                else {
                    unexpected.push(name.clone());
                    continue;
                };
                if !with_projection && layer + 1 == layers {
                    continue;
                }
                let prefix = format!("text_model.encoder.layers.{layer}");
                if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
                    // q, k and v stacked along the output dimension.
                    let width = tensor.dim(0).map_err(tensor_error)? / 3;
                    for (i, proj) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
                        let part = tensor
                            .narrow(0, i * width, width)
                            .and_then(|t| t.contiguous())
                            .map_err(tensor_error)?;
                        clip.insert(format!("{prefix}.self_attn.{proj}.{kind}"), part);
                    }
                    continue;
                }
                const RENAMES: [(&str, &str); 5] = [
                    ("ln_1.", "layer_norm1."),
                    ("ln_2.", "layer_norm2."),
                    ("attn.out_proj.", "self_attn.out_proj."),
                    ("mlp.c_fc.", "mlp.fc1."),
                    ("mlp.c_proj.", "mlp.fc2."),
                ];
                let Some(renamed) = RENAMES
                    .iter()
                    .find_map(|(from, to)| Some(format!("{to}{}", rest.strip_prefix(from)?)))
                else {
                    unexpected.push(name.clone());
                    continue;
                };
                (format!("{prefix}.{renamed}"), tensor.clone())
            }
        };
        clip.insert(new_name, tensor);
    }
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(LdmError::Unexpected {
            component,
            names: unexpected,
        });
    }
    let config = clip_config(&clip, component, "gelu", with_projection)?;
    Ok((clip, config))
}

/// transformers' `CLIPTextConfig` for a converted text model, after checking its names.
fn clip_config(
    clip: &TensorMap,
    component: Component,
    hidden_act: &str,
    with_projection: bool,
) -> Result<Value, LdmError> {
    let s = Shapes {
        component,
        map: clip,
    };
    let token_embedding = "text_model.embeddings.token_embedding.weight";
    let vocab_size = s.dim(token_embedding, 0)?;
    let hidden_size = s.dim(token_embedding, 1)?;
    let max_positions = s.dim("text_model.embeddings.position_embedding.weight", 0)?;
    let layers = s.count("text_model.encoder.layers.");
    let intermediate_size = s.dim("text_model.encoder.layers.0.mlp.fc1.weight", 0)?;
    if hidden_size % 64 != 0 {
        return Err(s.inconsistent(format!(
            "a width of {hidden_size} does not split into 64-wide attention heads"
        )));
    }
    let projection_dim = if with_projection {
        s.dim("text_projection.weight", 0)?
    } else {
        hidden_size
    };

    let mut names = BTreeSet::new();
    names.insert(token_embedding.to_owned());
    names.insert("text_model.embeddings.position_embedding.weight".to_owned());
    add_modules(&mut names, "text_model", &["final_layer_norm"]);
    for layer in 0..layers {
        add_modules(
            &mut names,
            &format!("text_model.encoder.layers.{layer}"),
            &[
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "layer_norm1",
                "layer_norm2",
                "mlp.fc1",
                "mlp.fc2",
            ],
        );
    }
    if with_projection {
        names.insert("text_projection.weight".to_owned());
    }
    check_names(component, clip, &names, vec![])?;

    let architecture = if with_projection {
        "CLIPTextModelWithProjection"
    } else {
        "CLIPTextModel"
    };
    // The token ids are those of the configs diffusers ships for SD (eos 2 makes
    // transformers pool at the highest token id, the end-of-text token).
    Ok(json!({
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": hidden_act,
        "hidden_size": hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": max_positions,
        "model_type": "clip_text_model",
        "num_attention_heads": hidden_size / 64,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection_dim,
        "vocab_size": vocab_size,
    }))
}
