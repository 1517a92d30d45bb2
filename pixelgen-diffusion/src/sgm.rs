//! UNet weight names in the original LDM/SGM layout (`input_blocks.4.1.proj_in`, the layout
//! of single-file checkpoints and of kohya-ss SDXL LoRAs) and in diffusers' layout
//! (`down_blocks.1.attentions.0.proj_in`).
//!
//! The LDM UNet numbers its blocks flatly, so the diffusers indices follow from the
//! architecture: every down level holds `layers_per_block` (resnet, attention?) pairs and,
//! except the last level, a downsampler; every up level holds `layers_per_block + 1` pairs
//! and, except the last, an upsampler. Names are relative to the UNet (no
//! `model.diffusion_model.` prefix); whatever follows the mapped module (`.weight`, a
//! deeper path such as `.transformer_blocks.0.attn1.to_q.weight`) is kept as is.

use serde_json::Value;

/// What the SGM name mapping needs to know about the UNet (from its diffusers config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnetLayout {
    pub layers_per_block: usize,
    /// Per down level, whether it has attention blocks (`CrossAttnDownBlock2D`).
    pub down_has_attention: Vec<bool>,
}

impl UnetLayout {
    /// Reads the layout from a diffusers `unet/config.json`; `None` if the config lacks
    /// `layers_per_block` or `down_block_types`, or gives `layers_per_block` per level (no
    /// SD model does, and the LDM block numbering assumes one value).
    pub fn from_unet_config(config: &Value) -> Option<Self> {
        let layers_per_block = usize::try_from(config.get("layers_per_block")?.as_u64()?).ok()?;
        let down_has_attention = config
            .get("down_block_types")?
            .as_array()?
            .iter()
            .map(|t| t.as_str().map(|t| t.contains("CrossAttn")))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            layers_per_block,
            down_has_attention,
        })
    }
}

/// Modules outside the down/mid/up blocks, LDM name first.
const TOP_LEVEL: [(&str, &str); 7] = [
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
];

/// Sub-modules of a resnet, LDM name first. Attention blocks keep their inner names.
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// The diffusers name of an LDM/SGM UNet weight or module, or `None` when the name does
/// not exist in a UNet of this layout.
pub fn sgm_unet_to_diffusers(name: &str, layout: &UnetLayout) -> Option<String> {
    if let Some(mapped) = map_table(name, &TOP_LEVEL, false) {
        return Some(mapped);
    }
    let (head, rest) = name.split_once('.')?;
    let (index, rest) = take_index(rest)?;
    let levels = layout.down_has_attention.len();
    let per_level = layout.layers_per_block + 1;
    match head {
        "middle_block" => match index {
            0 | 2 => resnet(&format!("mid_block.resnets.{}", index / 2), rest, false),
            1 => Some(join("mid_block.attentions.0", rest)),
            _ => None,
        },
        "input_blocks" => {
            // Block 0 is conv_in, which the table maps.
            let (level, slot) = ((index.checked_sub(1)?) / per_level, (index - 1) % per_level);
            let (sub, rest) = take_index(rest)?;
            if level >= levels {
                return None;
            }
            let prefix = format!("down_blocks.{level}");
            if slot == layout.layers_per_block {
                // The downsampler closes every level but the last.
                let rest = module_rest(rest, "op")?;
                (sub == 0 && level + 1 < levels)
                    .then(|| join(&format!("{prefix}.downsamplers.0.conv"), rest))
            } else {
                match sub {
                    0 => resnet(&format!("{prefix}.resnets.{slot}"), rest, false),
                    1 if layout.down_has_attention[level] => {
                        Some(join(&format!("{prefix}.attentions.{slot}"), rest))
                    }
                    _ => None,
                }
            }
        }
        "output_blocks" => {
            let (level, slot) = (index / per_level, index % per_level);
            let (sub, rest) = take_index(rest)?;
            if level >= levels {
                return None;
            }
            // Up level `i` mirrors down level `levels - 1 - i`.
            let attention = layout.down_has_attention[levels - 1 - level];
            let upsampler = if attention { 2 } else { 1 };
            let prefix = format!("up_blocks.{level}");
            match sub {
                0 => resnet(&format!("{prefix}.resnets.{slot}"), rest, false),
                1 if attention => Some(join(&format!("{prefix}.attentions.{slot}"), rest)),
                s if s == upsampler && slot == layout.layers_per_block && level + 1 < levels => {
                    let rest = module_rest(rest, "conv")?;
                    Some(join(&format!("{prefix}.upsamplers.0.conv"), rest))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The LDM/SGM name of a diffusers UNet weight or module: the inverse of
/// [`sgm_unet_to_diffusers`].
pub fn diffusers_unet_to_sgm(name: &str, layout: &UnetLayout) -> Option<String> {
    if let Some(mapped) = map_table(name, &TOP_LEVEL, true) {
        return Some(mapped);
    }
    let (head, rest) = name.split_once('.')?;
    let levels = layout.down_has_attention.len();
    let per_level = layout.layers_per_block + 1;
    if head == "mid_block" {
        let (kind, rest) = rest.split_once('.')?;
        let (index, rest) = take_index(rest)?;
        return match (kind, index) {
            ("resnets", 0 | 1) => resnet(&format!("middle_block.{}", index * 2), rest, true),
            ("attentions", 0) => Some(join("middle_block.1", rest)),
            _ => None,
        };
    }
    let (level, rest) = take_index(rest)?;
    let (kind, rest) = rest.split_once('.')?;
    let (slot, rest) = take_index(rest)?;
    if level >= levels {
        return None;
    }
    let down = 1 + level * per_level;
    let up = level * per_level;
    let up_attention = layout.down_has_attention[levels - 1 - level];
    match (head, kind) {
        ("down_blocks", "resnets") if slot < layout.layers_per_block => {
            resnet(&format!("input_blocks.{}.0", down + slot), rest, true)
        }
        ("down_blocks", "attentions")
            if slot < layout.layers_per_block && layout.down_has_attention[level] =>
        {
            Some(join(&format!("input_blocks.{}.1", down + slot), rest))
        }
        ("down_blocks", "downsamplers") if slot == 0 && level + 1 < levels => {
            let rest = module_rest(rest, "conv")?;
            let index = down + layout.layers_per_block;
            Some(join(&format!("input_blocks.{index}.0.op"), rest))
        }
        ("up_blocks", "resnets") if slot < per_level => {
            resnet(&format!("output_blocks.{}.0", up + slot), rest, true)
        }
        ("up_blocks", "attentions") if slot < per_level && up_attention => {
            Some(join(&format!("output_blocks.{}.1", up + slot), rest))
        }
        ("up_blocks", "upsamplers") if slot == 0 && level + 1 < levels => {
            let rest = module_rest(rest, "conv")?;
            let (index, sub) = (
                up + layout.layers_per_block,
                if up_attention { 2 } else { 1 },
            );
            Some(join(&format!("output_blocks.{index}.{sub}.conv"), rest))
        }
        _ => None,
    }
}

/// Maps `name` through a table of module prefixes (`inverse` reads the table right to left).
fn map_table(name: &str, table: &[(&str, &str)], inverse: bool) -> Option<String> {
    table.iter().find_map(|&(ldm, diffusers)| {
        let (from, to) = if inverse {
            (diffusers, ldm)
        } else {
            (ldm, diffusers)
        };
        module_rest(name, from).map(|rest| join(to, rest))
    })
}

/// A resnet sub-module under `prefix`; `rest` starts with the source-layout sub-module name.
fn resnet(prefix: &str, rest: &str, inverse: bool) -> Option<String> {
    map_table(rest, &RESNET, inverse).map(|inner| format!("{prefix}.{inner}"))
}

/// What follows the module path `module` in `name` (`""` for the module itself), or `None`
/// if `name` is neither `module` nor inside it (`conv_in` is not inside `conv`).
fn module_rest<'a>(name: &'a str, module: &str) -> Option<&'a str> {
    match name.strip_prefix(module)? {
        "" => Some(""),
        rest => rest.strip_prefix('.'),
    }
}

/// Splits a leading decimal component off `s` (`"4.1.foo"` → `(4, "1.foo")`).
fn take_index(s: &str) -> Option<(usize, &str)> {
    let (first, rest) = s.split_once('.').unwrap_or((s, ""));
    // `parse` would accept a leading '+'; names only ever carry plain digits.
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((first.parse().ok()?, rest))
}

/// `prefix.rest`, or `prefix` alone when `rest` is empty.
fn join(prefix: &str, rest: &str) -> String {
    if rest.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}.{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD1.x: four levels, attention on all but the last.
    fn sd1() -> UnetLayout {
        UnetLayout {
            layers_per_block: 2,
            down_has_attention: vec![true, true, true, false],
        }
    }

    /// SDXL: three levels, attention on all but the first.
    fn sdxl() -> UnetLayout {
        UnetLayout {
            layers_per_block: 2,
            down_has_attention: vec![false, true, true],
        }
    }

    // Expected names from the tables of diffusers' convert_diffusers_to_original_stable_diffusion.py
    // and convert_diffusers_to_original_sdxl.py.
    const SD1: &[(&str, &str)] = &[
        ("time_embed.0.weight", "time_embedding.linear_1.weight"),
        ("time_embed.2.bias", "time_embedding.linear_2.bias"),
        ("input_blocks.0.0.weight", "conv_in.weight"),
        (
            "input_blocks.1.0.in_layers.0.weight",
            "down_blocks.0.resnets.0.norm1.weight",
        ),
        (
            "input_blocks.1.0.in_layers.2.weight",
            "down_blocks.0.resnets.0.conv1.weight",
        ),
        (
            "input_blocks.2.1.proj_in.weight",
            "down_blocks.0.attentions.1.proj_in.weight",
        ),
        (
            "input_blocks.3.0.op.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
        ),
        (
            "input_blocks.4.0.skip_connection.bias",
            "down_blocks.1.resnets.0.conv_shortcut.bias",
        ),
        (
            "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight",
            "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight",
        ),
        (
            "input_blocks.9.0.op.bias",
            "down_blocks.2.downsamplers.0.conv.bias",
        ),
        (
            "input_blocks.11.0.emb_layers.1.weight",
            "down_blocks.3.resnets.1.time_emb_proj.weight",
        ),
        (
            "middle_block.0.out_layers.3.weight",
            "mid_block.resnets.0.conv2.weight",
        ),
        (
            "middle_block.1.transformer_blocks.0.ff.net.2.weight",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight",
        ),
        (
            "middle_block.2.out_layers.0.bias",
            "mid_block.resnets.1.norm2.bias",
        ),
        (
            "output_blocks.0.0.skip_connection.weight",
            "up_blocks.0.resnets.0.conv_shortcut.weight",
        ),
        // Up level 0 has no attention: its upsampler is the block's second module.
        (
            "output_blocks.2.1.conv.weight",
            "up_blocks.0.upsamplers.0.conv.weight",
        ),
        (
            "output_blocks.3.1.proj_out.bias",
            "up_blocks.1.attentions.0.proj_out.bias",
        ),
        (
            "output_blocks.5.2.conv.weight",
            "up_blocks.1.upsamplers.0.conv.weight",
        ),
        (
            "output_blocks.11.1.norm.weight",
            "up_blocks.3.attentions.2.norm.weight",
        ),
        ("out.0.weight", "conv_norm_out.weight"),
        ("out.2.bias", "conv_out.bias"),
        // Module paths, as LoRAs name them.
        (
            "input_blocks.1.0.in_layers.2",
            "down_blocks.0.resnets.0.conv1",
        ),
        (
            "output_blocks.3.1.transformer_blocks.0.attn1.to_out.0",
            "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
        ),
    ];

    const SDXL: &[(&str, &str)] = &[
        ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
        ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
        (
            "input_blocks.1.0.in_layers.2.weight",
            "down_blocks.0.resnets.0.conv1.weight",
        ),
        (
            "input_blocks.3.0.op.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
        ),
        (
            "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
            "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight",
        ),
        (
            "input_blocks.8.1.proj_in.weight",
            "down_blocks.2.attentions.1.proj_in.weight",
        ),
        (
            "middle_block.1.proj_out.weight",
            "mid_block.attentions.0.proj_out.weight",
        ),
        (
            "output_blocks.2.2.conv.weight",
            "up_blocks.0.upsamplers.0.conv.weight",
        ),
        (
            "output_blocks.5.1.proj_in.weight",
            "up_blocks.1.attentions.2.proj_in.weight",
        ),
        (
            "output_blocks.5.2.conv.bias",
            "up_blocks.1.upsamplers.0.conv.bias",
        ),
        (
            "output_blocks.8.0.skip_connection.weight",
            "up_blocks.2.resnets.2.conv_shortcut.weight",
        ),
    ];

    #[test]
    fn maps_both_ways() {
        for (layout, table) in [(sd1(), SD1), (sdxl(), SDXL)] {
            for &(ldm, diffusers) in table {
                assert_eq!(
                    sgm_unet_to_diffusers(ldm, &layout).as_deref(),
                    Some(diffusers),
                    "{ldm}"
                );
                assert_eq!(
                    diffusers_unet_to_sgm(diffusers, &layout).as_deref(),
                    Some(ldm),
                    "{diffusers}"
                );
            }
        }
    }

    #[test]
    fn refuses_names_the_layout_lacks() {
        let none_sd1 = [
            "input_blocks.12.0.in_layers.0.weight", // past the last level
            "input_blocks.10.1.proj_in.weight",     // level 3 has no attention
            "input_blocks.12.0.op.weight",          // the last level has no downsampler
            "output_blocks.11.2.conv.weight",       // nor upsampler
            "output_blocks.0.1.proj_in.weight",     // up level 0 has no attention
            "output_blocks.1.1.conv.weight",        // upsamplers close a level
            "middle_block.3.in_layers.0.weight",
            "input_blocks.1.0.in_layers.1.weight", // SiLU, no weights
            "input_blocks.x.0.op.weight",
            "conv_inx.weight",
            "something_else.weight",
        ];
        for name in none_sd1 {
            assert_eq!(sgm_unet_to_diffusers(name, &sd1()), None, "{name}");
        }
        let none_sdxl = [
            "input_blocks.1.1.proj_in.weight",
            "output_blocks.8.1.proj_in.weight",
        ];
        for name in none_sdxl {
            assert_eq!(sgm_unet_to_diffusers(name, &sdxl()), None, "{name}");
        }
        for name in [
            "down_blocks.3.downsamplers.0.conv.weight",
            "up_blocks.3.upsamplers.0.conv.weight",
            "down_blocks.3.attentions.0.proj_in.weight",
            "down_blocks.0.resnets.2.conv1.weight",
            "up_blocks.4.resnets.0.conv1.weight",
            "mid_block.resnets.2.conv1.weight",
            "conv_in_extra.weight",
        ] {
            assert_eq!(diffusers_unet_to_sgm(name, &sd1()), None, "{name}");
        }
    }
}
