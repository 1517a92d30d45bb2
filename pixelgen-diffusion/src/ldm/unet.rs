//! The UNet of a single file: its architecture read off tensor shapes, its config, and the LDM → diffusers names (through `sgm` for SDXL's layout).

use super::*;

/// The UNet architecture as the LDM config gives it.
pub(super) struct UnetArch {
    pub(super) block_out: Vec<usize>,
    pub(super) layers_per_block: usize,
    pub(super) attention: Vec<bool>,
    /// Transformer blocks per attention, per level (1 where the level has no attention).
    pub(super) depth: Vec<usize>,
    pub(super) added_conditioning: bool,
}

pub(super) fn unet_model(
    src: TensorMap,
    family: Family,
    pooled_width: Option<usize>,
) -> Result<(TensorMap, Value), LdmError> {
    let component = Component::Unet;
    let s = Shapes {
        component,
        map: &src,
    };
    let in_channels = s.dim("input_blocks.0.0.weight", 1)?;
    let out_channels = s.dim("out.2.weight", 0)?;
    let input_blocks = s.count("input_blocks.");
    // Each level ends with a downsampler `input_blocks.N.0.op` except the last.
    let layers_per_block = (1..input_blocks)
        .find(|k| s.has(&format!("input_blocks.{k}.0.op.weight")))
        .map_or(input_blocks.saturating_sub(1), |k| k - 1);
    if layers_per_block == 0 || !input_blocks.is_multiple_of(layers_per_block + 1) {
        return Err(s.inconsistent(format!(
            "{input_blocks} input blocks do not split into levels of {layers_per_block} resnets and a downsampler"
        )));
    }
    let levels = input_blocks / (layers_per_block + 1);
    let (mut block_out, mut attention, mut depth) = (vec![], vec![], vec![]);
    for level in 0..levels {
        let block = 1 + level * (layers_per_block + 1);
        block_out.push(s.dim(&format!("input_blocks.{block}.0.out_layers.3.weight"), 0)?);
        let has_attention = s.has(&format!("input_blocks.{block}.1.proj_in.weight"));
        attention.push(has_attention);
        let blocks = s.count(&format!("input_blocks.{block}.1.transformer_blocks."));
        depth.push(if has_attention { blocks } else { 1 });
    }
    let Some(first) = attention.iter().position(|&a| a) else {
        return Err(s.inconsistent("it has no attention blocks".to_owned()));
    };
    let first = format!("input_blocks.{}.1", 1 + first * (layers_per_block + 1));
    let use_linear_projection = s.dims(&format!("{first}.proj_in.weight"))?.len() == 2;
    let cross_attention_dim = s.dim(
        &format!("{first}.transformer_blocks.0.attn2.to_k.weight"),
        1,
    )?;
    // SD1 has 8 heads everywhere; SD2 and SDXL have 64-wide heads, a count per level
    // (diffusers calls the count `attention_head_dim`).
    let heads = if use_linear_projection {
        if let Some(&c) = block_out.iter().find(|&&c| c % 64 != 0) {
            return Err(s.inconsistent(format!(
                "{c} channels do not split into 64-wide attention heads"
            )));
        }
        json!(block_out.iter().map(|c| c / 64).collect::<Vec<_>>())
    } else {
        json!(8)
    };
    // diffusers gives the up levels the down levels' depths, and the middle block the
    // deepest level's; check the file agrees.
    let last_depth = depth[levels - 1];
    if s.count("middle_block.1.transformer_blocks.") != last_depth {
        return Err(s.inconsistent(format!(
            "the middle block's attention is not {last_depth} transformer blocks deep like the last level's"
        )));
    }
    for up in 0..levels {
        let level = levels - 1 - up;
        for slot in 0..=layers_per_block {
            let block = format!("output_blocks.{}.1", up * (layers_per_block + 1) + slot);
            let has_attention = s.has(&format!("{block}.proj_in.weight"));
            let blocks = s.count(&format!("{block}.transformer_blocks."));
            if has_attention != attention[level] || (has_attention && blocks != depth[level]) {
                return Err(s.inconsistent(format!(
                    "`{block}` does not mirror the attention of down level {level}"
                )));
            }
        }
    }
    let added_conditioning = s.has("label_emb.0.0.weight");
    let (addition_embed_type, addition_time_embed_dim, projection_dim) = if added_conditioning {
        let width = s.dim("label_emb.0.0.weight", 1)?;
        let time_dim = pooled_width
            .and_then(|p| width.checked_sub(p))
            .filter(|rest| rest % 6 == 0 && *rest > 0)
            .map_or(256, |rest| rest / 6);
        (json!("text_time"), json!(time_dim), json!(width))
    } else {
        (Value::Null, Value::Null, Value::Null)
    };
    if family == Family::Sdxl && !added_conditioning {
        return Err(LdmError::Missing {
            component,
            names: vec!["label_emb.0.0.weight".to_owned()],
        });
    }
    let transformer_layers = if depth.iter().all(|&d| d == depth[0]) {
        json!(depth[0])
    } else {
        json!(depth)
    };
    let down_types: Vec<&str> = attention
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up_types: Vec<&str> = attention
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let config = json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": addition_embed_type,
        "addition_time_embed_dim": addition_time_embed_dim,
        "attention_head_dim": heads,
        "block_out_channels": block_out,
        "center_input_sample": false,
        "class_embed_type": null,
        "cross_attention_dim": cross_attention_dim,
        "down_block_types": down_types,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": in_channels,
        "layers_per_block": layers_per_block,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "out_channels": out_channels,
        "projection_class_embeddings_input_dim": projection_dim,
        // Latent size of the family's native resolution.
        "sample_size": match family { Family::Sd1 => 64, Family::Sd2 => 96, Family::Sdxl => 128 },
        "transformer_layers_per_block": transformer_layers,
        "up_block_types": up_types,
        // SD2 overflows in fp16 attention without it; diffusers' SD2 configs set it.
        "upcast_attention": family == Family::Sd2,
        "use_linear_projection": use_linear_projection,
    });

    let arch = UnetArch {
        block_out,
        layers_per_block,
        attention,
        depth,
        added_conditioning,
    };
    let layout = UnetLayout {
        layers_per_block,
        down_has_attention: arch.attention.clone(),
    };
    let mut unet = TensorMap::new();
    let mut unexpected = vec![];
    for (name, tensor) in src {
        match sgm::sgm_unet_to_diffusers(&name, &layout) {
            Some(diffusers) => {
                unet.insert(diffusers, tensor);
            }
            None => unexpected.push(name),
        }
    }
    check_names(component, &unet, &unet_names(&arch), unexpected)?;
    Ok((unet, config))
}

/// Every tensor name of diffusers' `UNet2DConditionModel` with this architecture.
pub(super) fn unet_names(arch: &UnetArch) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let levels = arch.block_out.len();
    let lpb = arch.layers_per_block;
    add_modules(&mut names, "", &["conv_in", "conv_norm_out", "conv_out"]);
    add_modules(&mut names, "time_embedding", &["linear_1", "linear_2"]);
    if arch.added_conditioning {
        add_modules(&mut names, "add_embedding", &["linear_1", "linear_2"]);
    }
    let resnet = |names: &mut BTreeSet<String>, prefix: String, shortcut: bool| {
        add_modules(
            names,
            &prefix,
            &["norm1", "conv1", "time_emb_proj", "norm2", "conv2"],
        );
        if shortcut {
            add_modules(names, &prefix, &["conv_shortcut"]);
        }
    };
    let attention = |names: &mut BTreeSet<String>, prefix: String, depth: usize| {
        add_modules(names, &prefix, &["norm", "proj_in", "proj_out"]);
        for block in 0..depth {
            let block = format!("{prefix}.transformer_blocks.{block}");
            add_modules(
                names,
                &block,
                &[
                    "norm1",
                    "norm2",
                    "norm3",
                    "attn1.to_out.0",
                    "attn2.to_out.0",
                    "ff.net.0.proj",
                    "ff.net.2",
                ],
            );
            for attn in ["attn1", "attn2"] {
                for proj in ["to_q", "to_k", "to_v"] {
                    names.insert(format!("{block}.{attn}.{proj}.weight"));
                }
            }
        }
    };
    for level in 0..levels {
        let out = arch.block_out[level];
        let input = arch.block_out[level.saturating_sub(1)];
        for slot in 0..lpb {
            let prefix = format!("down_blocks.{level}");
            resnet(
                &mut names,
                format!("{prefix}.resnets.{slot}"),
                slot == 0 && input != out,
            );
            if arch.attention[level] {
                attention(
                    &mut names,
                    format!("{prefix}.attentions.{slot}"),
                    arch.depth[level],
                );
            }
        }
        if level + 1 < levels {
            add_modules(
                &mut names,
                &format!("down_blocks.{level}.downsamplers.0"),
                &["conv"],
            );
        }
    }
    resnet(&mut names, "mid_block.resnets.0".to_owned(), false);
    resnet(&mut names, "mid_block.resnets.1".to_owned(), false);
    attention(
        &mut names,
        "mid_block.attentions.0".to_owned(),
        arch.depth[levels - 1],
    );
    for up in 0..levels {
        let level = levels - 1 - up;
        for slot in 0..=lpb {
            let prefix = format!("up_blocks.{up}");
            // Up resnets take the skip connection too, so their input is always wider.
            resnet(&mut names, format!("{prefix}.resnets.{slot}"), true);
            if arch.attention[level] {
                attention(
                    &mut names,
                    format!("{prefix}.attentions.{slot}"),
                    arch.depth[level],
                );
            }
        }
        if up + 1 < levels {
            add_modules(
                &mut names,
                &format!("up_blocks.{up}.upsamplers.0"),
                &["conv"],
            );
        }
    }
    names
}
