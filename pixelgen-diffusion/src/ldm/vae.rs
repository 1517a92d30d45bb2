//! The VAE of a single file: config from shapes and the LDM → diffusers names, old attention names included.

use super::*;

pub(super) fn vae_model(src: TensorMap, family: Family) -> Result<(TensorMap, Value), LdmError> {
    let component = Component::Vae;
    let s = Shapes {
        component,
        map: &src,
    };
    let in_channels = s.dim("encoder.conv_in.weight", 1)?;
    let out_channels = s.dim("decoder.conv_out.weight", 0)?;
    let latent_channels = s.dim("decoder.conv_in.weight", 1)?;
    let levels = s.count("encoder.down.");
    let layers_per_block = s.count("encoder.down.0.block.");
    if levels == 0 || layers_per_block == 0 {
        return Err(LdmError::Missing {
            component,
            names: vec!["encoder.down.0.block.0.conv1.weight".to_owned()],
        });
    }
    let block_out = (0..levels)
        .map(|level| s.dim(&format!("encoder.down.{level}.block.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>, _>>()?;
    if s.count("decoder.up.") != levels {
        return Err(s.inconsistent(format!(
            "the decoder does not have {levels} levels like the encoder"
        )));
    }
    let mid_attention = s.has("encoder.mid.attn_1.q.weight");
    let quant_conv = s.has("quant_conv.weight");
    let post_quant_conv = s.has("post_quant_conv.weight");
    let config = json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": block_out,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "force_upcast": true,
        "in_channels": in_channels,
        "latent_channels": latent_channels,
        "layers_per_block": layers_per_block,
        "mid_block_add_attention": mid_attention,
        "norm_num_groups": 32,
        "out_channels": out_channels,
        "sample_size": match family { Family::Sd1 => 512, Family::Sd2 => 768, Family::Sdxl => 1024 },
        "scaling_factor": if family == Family::Sdxl { 0.13025 } else { 0.18215 },
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "use_post_quant_conv": post_quant_conv,
        "use_quant_conv": quant_conv,
    });

    let mut vae = TensorMap::new();
    let mut unexpected = vec![];
    for (name, tensor) in src {
        let Some(diffusers) = vae_name(&name, levels) else {
            unexpected.push(name);
            continue;
        };
        // The mid-block attention's projections are 1×1 convs in LDM, linears in diffusers.
        let is_projection = ["to_q", "to_k", "to_v", "to_out.0"]
            .iter()
            .any(|p| diffusers.ends_with(&format!("attentions.0.{p}.weight")));
        let tensor = match tensor.dims() {
            &[out, input, ..] if is_projection => {
                tensor
                    .reshape((out, input))
                    .map_err(|source| LdmError::Tensor {
                        component,
                        source: Box::new(source),
                    })?
            }
            _ => tensor,
        };
        vae.insert(diffusers, tensor);
    }
    let mut names = BTreeSet::new();
    let resnet = |names: &mut BTreeSet<String>, prefix: String, shortcut: bool| {
        add_modules(names, &prefix, &["norm1", "conv1", "norm2", "conv2"]);
        if shortcut {
            add_modules(names, &prefix, &["conv_shortcut"]);
        }
    };
    for coder in ["encoder", "decoder"] {
        add_modules(&mut names, coder, &["conv_in", "conv_norm_out", "conv_out"]);
        for resnet_index in 0..2 {
            resnet(
                &mut names,
                format!("{coder}.mid_block.resnets.{resnet_index}"),
                false,
            );
        }
        if mid_attention {
            add_modules(
                &mut names,
                &format!("{coder}.mid_block.attentions.0"),
                &["group_norm", "to_q", "to_k", "to_v", "to_out.0"],
            );
        }
    }
    for level in 0..levels {
        let (input, out) = (block_out[level.saturating_sub(1)], block_out[level]);
        for slot in 0..layers_per_block {
            let prefix = format!("encoder.down_blocks.{level}.resnets.{slot}");
            resnet(&mut names, prefix, slot == 0 && input != out);
        }
        if level + 1 < levels {
            add_modules(
                &mut names,
                &format!("encoder.down_blocks.{level}.downsamplers.0"),
                &["conv"],
            );
        }
    }
    for up in 0..levels {
        let out = block_out[levels - 1 - up];
        let input = block_out[levels - up.max(1)];
        for slot in 0..=layers_per_block {
            let prefix = format!("decoder.up_blocks.{up}.resnets.{slot}");
            resnet(&mut names, prefix, slot == 0 && input != out);
        }
        if up + 1 < levels {
            add_modules(
                &mut names,
                &format!("decoder.up_blocks.{up}.upsamplers.0"),
                &["conv"],
            );
        }
    }
    for (present, module) in [
        (quant_conv, "quant_conv"),
        (post_quant_conv, "post_quant_conv"),
    ] {
        if present {
            add_modules(&mut names, "", &[module]);
        }
    }
    check_names(component, &vae, &names, unexpected)?;
    Ok((vae, config))
}

/// The diffusers name of an LDM VAE tensor (prefix removed).
fn vae_name(name: &str, levels: usize) -> Option<String> {
    let (coder, rest) = name.split_once('.')?;
    if matches!(coder, "quant_conv" | "post_quant_conv") {
        return Some(name.to_owned());
    }
    if !matches!(coder, "encoder" | "decoder") {
        return None;
    }
    const FIXED: [(&str, &str); 6] = [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("norm_out.", "conv_norm_out."),
        ("mid.block_1.", "mid_block.resnets.0."),
        ("mid.block_2.", "mid_block.resnets.1."),
        ("mid.attn_1.", "mid_block.attentions.0."),
    ];
    const ATTENTION: [(&str, &str); 5] = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    let inner = if let Some((from, to)) = FIXED.iter().find(|(from, _)| rest.starts_with(from)) {
        let tail = &rest[from.len()..];
        if *from == "mid.attn_1." {
            let (a, b) = ATTENTION.iter().find(|(a, _)| tail.starts_with(a))?;
            format!("{to}{b}{}", &tail[a.len()..])
        } else {
            format!("{to}{tail}")
        }
    } else {
        // `down.N.block.M.…`, `down.N.downsample.conv.…`, `up.N.block.M.…`, `up.N.upsample.conv.…`;
        // LDM numbers the decoder's levels from the bottom, diffusers from the top.
        let (direction, rest) = rest.split_once('.')?;
        let (index, rest) = rest.split_once('.')?;
        let index: usize = index.parse().ok()?;
        let level = match (coder, direction) {
            ("encoder", "down") => index,
            ("decoder", "up") => levels.checked_sub(index + 1)?,
            _ => return None,
        };
        let blocks = format!("{direction}_blocks.{level}");
        if let Some(tail) = rest.strip_prefix("block.") {
            format!("{blocks}.resnets.{tail}")
        } else {
            let sampler = if direction == "down" {
                "downsample"
            } else {
                "upsample"
            };
            let tail = rest.strip_prefix(sampler)?.strip_prefix(".conv.")?;
            format!("{blocks}.{sampler}rs.0.conv.{tail}")
        }
    };
    Some(format!(
        "{coder}.{}",
        inner.replace("nin_shortcut", "conv_shortcut")
    ))
}
