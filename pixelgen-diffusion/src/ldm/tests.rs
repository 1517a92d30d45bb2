use super::unet::{UnetArch, unet_names};
use super::*;
use candle_core::{DType, Device};

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

fn arange(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::arange(0f32, n as f32, &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Test checkpoints: the shapes that architecture inference reads are real, the other
/// tensors are one-element placeholders.
struct Spec {
    arch: UnetArch,
    linear: bool,
    cross: usize,
    adm: Option<usize>,
}

fn sd1_spec() -> Spec {
    Spec {
        arch: UnetArch {
            block_out: vec![32, 64],
            layers_per_block: 1,
            attention: vec![true, false],
            depth: vec![1, 1],
            added_conditioning: false,
        },
        linear: false,
        cross: 64,
        adm: None,
    }
}

fn sdxl_spec() -> Spec {
    Spec {
        arch: UnetArch {
            block_out: vec![64, 128, 128],
            layers_per_block: 2,
            attention: vec![false, true, true],
            depth: vec![1, 2, 2],
            added_conditioning: true,
        },
        linear: true,
        cross: 192,
        adm: Some(32 + 6 * 8),
    }
}

fn layout(arch: &UnetArch) -> UnetLayout {
    UnetLayout {
        layers_per_block: arch.layers_per_block,
        down_has_attention: arch.attention.clone(),
    }
}

/// The shape of a diffusers UNet tensor, where inference reads it.
fn unet_shape(name: &str, spec: &Spec) -> Vec<usize> {
    let c = &spec.arch.block_out;
    let n = c.len();
    let parts: Vec<&str> = name.split('.').collect();
    let channels = match parts[..] {
        ["down_blocks", i, ..] => c[i.parse::<usize>().unwrap()],
        ["up_blocks", u, ..] => c[n - 1 - u.parse::<usize>().unwrap()],
        _ => c[n - 1],
    };
    match name {
        "conv_in.weight" => vec![c[0], 4, 3, 3],
        "conv_out.weight" => vec![4, c[0], 3, 3],
        "add_embedding.linear_1.weight" => vec![4 * c[0], spec.adm.unwrap()],
        _ if name.ends_with("conv2.weight") => vec![channels, channels, 3, 3],
        _ if name.ends_with("proj_in.weight") && spec.linear => vec![channels, channels],
        _ if name.ends_with("proj_in.weight") => vec![channels, channels, 1, 1],
        _ if name.ends_with("attn2.to_k.weight") => vec![channels, spec.cross],
        _ => vec![1],
    }
}

fn add_unet(ckpt: &mut TensorMap, spec: &Spec) {
    let layout = layout(&spec.arch);
    for name in unet_names(&spec.arch) {
        let ldm = sgm::diffusers_unet_to_sgm(&name, &layout).unwrap();
        ckpt.insert(format!("{UNET}{ldm}"), zeros(&unet_shape(&name, spec)));
    }
}

fn add_vae(ckpt: &mut TensorMap, block_out: &[usize], lpb: usize) {
    let n = block_out.len();
    let mut add = |name: String, shape: &[usize]| {
        ckpt.insert(format!("{VAE}{name}"), zeros(shape));
    };
    let resnet =
        |add: &mut dyn FnMut(String, &[usize]), prefix: String, cin: usize, cout: usize| {
            for module in ["norm1", "conv1", "norm2", "conv2"] {
                let shape = if module == "conv1" {
                    vec![cout, cin, 3, 3]
                } else {
                    vec![1]
                };
                add(format!("{prefix}.{module}.weight"), &shape);
                add(format!("{prefix}.{module}.bias"), &[1]);
            }
            if cin != cout {
                add(format!("{prefix}.nin_shortcut.weight"), &[1]);
                add(format!("{prefix}.nin_shortcut.bias"), &[1]);
            }
        };
    let last = block_out[n - 1];
    for coder in ["encoder", "decoder"] {
        for param in ["weight", "bias"] {
            for module in ["norm_out", "mid.attn_1.norm"] {
                add(format!("{coder}.{module}.{param}"), &[1]);
            }
            for p in ["q", "k", "v", "proj_out"] {
                let shape: &[usize] = if param == "weight" {
                    &[last, last, 1, 1]
                } else {
                    &[last]
                };
                add(format!("{coder}.mid.attn_1.{p}.{param}"), shape);
            }
        }
        for block in ["block_1", "block_2"] {
            resnet(&mut add, format!("{coder}.mid.{block}"), last, last);
        }
    }
    add("encoder.conv_in.weight".into(), &[block_out[0], 3, 3, 3]);
    add("encoder.conv_out.weight".into(), &[8, last, 3, 3]);
    add("decoder.conv_in.weight".into(), &[last, 4, 3, 3]);
    add("decoder.conv_out.weight".into(), &[3, block_out[0], 3, 3]);
    for name in [
        "encoder.conv_in.bias",
        "encoder.conv_out.bias",
        "decoder.conv_in.bias",
        "decoder.conv_out.bias",
    ] {
        add(name.into(), &[1]);
    }
    for conv in ["quant_conv", "post_quant_conv"] {
        add(format!("{conv}.weight"), &[1]);
        add(format!("{conv}.bias"), &[1]);
    }
    for level in 0..n {
        let input = block_out[level.saturating_sub(1)];
        for j in 0..lpb {
            let cin = if j == 0 { input } else { block_out[level] };
            resnet(
                &mut add,
                format!("encoder.down.{level}.block.{j}"),
                cin,
                block_out[level],
            );
        }
        if level + 1 < n {
            add(format!("encoder.down.{level}.downsample.conv.weight"), &[1]);
            add(format!("encoder.down.{level}.downsample.conv.bias"), &[1]);
        }
        // LDM numbers decoder levels from the bottom: up.{n-1} runs first.
        let input = block_out[(level + 1).min(n - 1)];
        for j in 0..=lpb {
            let cin = if j == 0 { input } else { block_out[level] };
            resnet(
                &mut add,
                format!("decoder.up.{level}.block.{j}"),
                cin,
                block_out[level],
            );
        }
        if level > 0 {
            add(format!("decoder.up.{level}.upsample.conv.weight"), &[1]);
            add(format!("decoder.up.{level}.upsample.conv.bias"), &[1]);
        }
    }
}

fn add_hf_clip(ckpt: &mut TensorMap, prefix: &str, hidden: usize, layers: usize) {
    let mut add = |name: String, shape: &[usize]| {
        ckpt.insert(format!("{prefix}text_model.{name}"), zeros(shape));
    };
    add("embeddings.token_embedding.weight".into(), &[1000, hidden]);
    add("embeddings.position_embedding.weight".into(), &[77, hidden]);
    add("embeddings.position_ids".into(), &[1, 77]);
    add("final_layer_norm.weight".into(), &[1]);
    add("final_layer_norm.bias".into(), &[1]);
    for layer in 0..layers {
        for module in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "layer_norm1",
            "layer_norm2",
            "mlp.fc1",
            "mlp.fc2",
        ] {
            let shape = if module == "mlp.fc1" {
                vec![2 * hidden, hidden]
            } else {
                vec![1]
            };
            add(format!("encoder.layers.{layer}.{module}.weight"), &shape);
            add(format!("encoder.layers.{layer}.{module}.bias"), &[1]);
        }
    }
}

fn add_open_clip(
    ckpt: &mut TensorMap,
    prefix: &str,
    hidden: usize,
    layers: usize,
    projection: usize,
) {
    let mut add = |name: String, t: Tensor| {
        ckpt.insert(format!("{prefix}{name}"), t);
    };
    add("token_embedding.weight".into(), zeros(&[1000, hidden]));
    add("positional_embedding".into(), zeros(&[77, hidden]));
    add("ln_final.weight".into(), zeros(&[1]));
    add("ln_final.bias".into(), zeros(&[1]));
    add("text_projection".into(), arange(&[hidden, projection]));
    add("logit_scale".into(), zeros(&[]));
    for layer in 0..layers {
        let p = format!("transformer.resblocks.{layer}");
        add(
            format!("{p}.attn.in_proj_weight"),
            arange(&[3 * hidden, hidden]),
        );
        add(format!("{p}.attn.in_proj_bias"), arange(&[3 * hidden]));
        add(format!("{p}.mlp.c_fc.weight"), zeros(&[2 * hidden, hidden]));
        for module in ["ln_1", "ln_2", "attn.out_proj", "mlp.c_proj"] {
            add(format!("{p}.{module}.weight"), zeros(&[1]));
        }
        for module in ["ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"] {
            add(format!("{p}.{module}.bias"), zeros(&[1]));
        }
    }
}

fn junk(ckpt: &mut TensorMap) {
    for name in [
        "model_ema.decay",
        "model_ema.diffusion_modelinput_blocks00weight",
        "alphas_cumprod",
        "betas",
    ] {
        ckpt.insert(name.to_owned(), zeros(&[1]));
    }
}

fn sd1_checkpoint() -> TensorMap {
    let mut ckpt = TensorMap::new();
    add_unet(&mut ckpt, &sd1_spec());
    add_vae(&mut ckpt, &[32, 64], 1);
    add_hf_clip(&mut ckpt, SD1_CLIP, 64, 2);
    junk(&mut ckpt);
    ckpt
}

fn sdxl_checkpoint() -> TensorMap {
    let mut ckpt = TensorMap::new();
    add_unet(&mut ckpt, &sdxl_spec());
    add_vae(&mut ckpt, &[32, 64], 1);
    add_hf_clip(&mut ckpt, SDXL_CLIP, 64, 2);
    add_open_clip(&mut ckpt, SDXL_OPEN_CLIP, 128, 3, 32);
    junk(&mut ckpt);
    ckpt
}

#[test]
fn sgm_names_round_trip_over_whole_unets() {
    for spec in [sd1_spec(), sdxl_spec()] {
        let layout = layout(&spec.arch);
        let mut seen = BTreeSet::new();
        for name in unet_names(&spec.arch) {
            let ldm =
                sgm::diffusers_unet_to_sgm(&name, &layout).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                sgm::sgm_unet_to_diffusers(&ldm, &layout).as_deref(),
                Some(name.as_str())
            );
            assert!(seen.insert(ldm.clone()), "two names map to {ldm}");
        }
    }
}

#[test]
fn converts_sd1() {
    let ckpt = sd1_checkpoint();
    let proj_in = ckpt[&format!("{UNET}input_blocks.1.1.proj_in.weight")].id();
    let up_conv = ckpt[&format!("{UNET}output_blocks.1.1.conv.weight")].id();
    let converted = convert_single_file(ckpt).unwrap();
    assert_eq!(converted.family, Family::Sd1);
    let w = &converted.weights;
    assert_eq!(
        w.unet["down_blocks.0.attentions.0.proj_in.weight"].id(),
        proj_in
    );
    assert_eq!(w.unet["up_blocks.0.upsamplers.0.conv.weight"].id(), up_conv);
    assert!(w.text_encoder_2.is_none() && converted.text_encoder_2_config.is_none());
    let te = w.text_encoder.as_ref().unwrap();
    assert!(te.contains_key("text_model.encoder.layers.1.mlp.fc2.bias"));
    assert!(!te.contains_key("text_model.embeddings.position_ids"));

    let unet = &converted.unet_config;
    assert_eq!(unet["block_out_channels"], json!([32, 64]));
    assert_eq!(unet["layers_per_block"], 1);
    assert_eq!(
        unet["down_block_types"],
        json!(["CrossAttnDownBlock2D", "DownBlock2D"])
    );
    assert_eq!(
        unet["up_block_types"],
        json!(["UpBlock2D", "CrossAttnUpBlock2D"])
    );
    assert_eq!(unet["attention_head_dim"], 8);
    assert_eq!(unet["cross_attention_dim"], 64);
    assert_eq!(unet["use_linear_projection"], false);
    assert_eq!(unet["transformer_layers_per_block"], 1);
    assert_eq!(unet["addition_embed_type"], Value::Null);
    let layout = UnetLayout::from_unet_config(unet).unwrap();
    assert_eq!(layout.down_has_attention, [true, false]);

    let vae = &converted.vae_config;
    assert_eq!(vae["block_out_channels"], json!([32, 64]));
    assert_eq!(vae["layers_per_block"], 1);
    assert_eq!(vae["latent_channels"], 4);
    assert_eq!(vae["scaling_factor"], 0.18215);
    // LDM's 1×1-conv attention projections become linears.
    assert_eq!(
        w.vae["decoder.mid_block.attentions.0.to_out.0.weight"].dims(),
        [64, 64]
    );
    assert!(
        w.vae
            .contains_key("decoder.up_blocks.0.upsamplers.0.conv.weight")
    );
    assert!(
        !w.vae
            .contains_key("decoder.up_blocks.1.upsamplers.0.conv.weight")
    );

    let te = converted.text_encoder_config.as_ref().unwrap();
    assert_eq!(te["hidden_size"], 64);
    assert_eq!(te["num_attention_heads"], 1);
    assert_eq!(te["num_hidden_layers"], 2);
    assert_eq!(te["intermediate_size"], 128);
    assert_eq!(te["vocab_size"], 1000);
    assert_eq!(te["max_position_embeddings"], 77);
    assert_eq!(te["hidden_act"], "quick_gelu");
    // SD1.5's config names no prediction type: the scheduler's default, epsilon.
    assert_eq!(converted.scheduler_config.get("prediction_type"), None);
    assert_eq!(converted.scheduler_config["beta_schedule"], "scaled_linear");
}

#[test]
fn converts_sdxl() {
    let converted = convert_single_file(sdxl_checkpoint()).unwrap();
    assert_eq!(converted.family, Family::Sdxl);
    let unet = &converted.unet_config;
    assert_eq!(unet["attention_head_dim"], json!([1, 2, 2]));
    assert_eq!(unet["transformer_layers_per_block"], json!([1, 2, 2]));
    assert_eq!(unet["use_linear_projection"], true);
    assert_eq!(unet["cross_attention_dim"], 192);
    assert_eq!(unet["addition_embed_type"], "text_time");
    assert_eq!(unet["projection_class_embeddings_input_dim"], 80);
    // 80 = pooled text (32) + 6 × 8.
    assert_eq!(unet["addition_time_embed_dim"], 8);
    assert_eq!(converted.vae_config["scaling_factor"], 0.13025);
    assert_eq!(
        converted.scheduler_config["_class_name"],
        "EulerDiscreteScheduler"
    );

    let te2 = converted.text_encoder_2_config.as_ref().unwrap();
    assert_eq!(te2["architectures"], json!(["CLIPTextModelWithProjection"]));
    assert_eq!(te2["hidden_act"], "gelu");
    assert_eq!(te2["num_attention_heads"], 2);
    assert_eq!(te2["num_hidden_layers"], 3);
    assert_eq!(te2["projection_dim"], 32);
    let w = converted.weights.text_encoder_2.as_ref().unwrap();
    // in_proj stacks q, k and v.
    let k = &w["text_model.encoder.layers.2.self_attn.k_proj.weight"];
    assert_eq!(k.dims(), [128, 128]);
    assert_eq!(values(k)[0], (128 * 128) as f32);
    assert_eq!(
        values(&w["text_model.encoder.layers.0.self_attn.v_proj.bias"])[0],
        256.0
    );
    // text_projection [hidden, proj] becomes a linear weight [proj, hidden].
    let projection = &w["text_projection.weight"];
    assert_eq!(projection.dims(), [32, 128]);
    assert_eq!(values(projection)[..2], [0.0, 32.0]);
    assert!(!w.contains_key("logit_scale"));
}

#[test]
fn converts_sd2_without_the_last_open_clip_layer() {
    let spec = Spec {
        linear: true,
        ..sd1_spec()
    };
    let mut ckpt = TensorMap::new();
    add_unet(
        &mut ckpt,
        &Spec {
            arch: UnetArch {
                block_out: vec![64, 128],
                ..spec.arch
            },
            ..spec
        },
    );
    add_vae(&mut ckpt, &[32, 64], 1);
    add_open_clip(&mut ckpt, SD2_OPEN_CLIP, 64, 3, 64);
    ckpt.insert("v_pred".to_owned(), zeros(&[]));
    let converted = convert_single_file(ckpt).unwrap();
    assert_eq!(converted.family, Family::Sd2);
    assert_eq!(converted.unet_config["attention_head_dim"], json!([1, 2]));
    let te = converted.text_encoder_config.as_ref().unwrap();
    assert_eq!(te["num_hidden_layers"], 2);
    assert_eq!(te["architectures"], json!(["CLIPTextModel"]));
    let w = converted.weights.text_encoder.as_ref().unwrap();
    assert!(
        !w.keys()
            .any(|k| k.contains("layers.2.") || k.starts_with("text_projection"))
    );
    assert_eq!(
        converted.scheduler_config["prediction_type"],
        "v_prediction"
    );
}

/// The scheduler configs single files get are the ones the families' default repos ship,
/// which is what diffusers' `from_single_file` loads (the fixture families copy them).
#[test]
fn single_files_get_the_scheduler_config_of_their_familys_default_repo() {
    let fixture = |family: &str| -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/diffusion")
            .join(family)
            .join("model/scheduler/scheduler_config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        config.as_object_mut().unwrap().remove("_diffusers_version");
        config
    };
    assert_eq!(
        scheduler_config(Family::Sd1, false, false, &None),
        fixture("sd1")
    );
    assert_eq!(
        scheduler_config(Family::Sd2, false, false, &None),
        fixture("sd2v")
    );
    assert_eq!(
        scheduler_config(Family::Sdxl, false, false, &None),
        fixture("sdxl")
    );
    // SD 2 base stopped at step 875000 and predicts noise; markers win.
    let base = scheduler_config(Family::Sd2, false, false, &Some(875000.0));
    assert_eq!(base["prediction_type"], "epsilon");
    let marked = scheduler_config(Family::Sd1, true, true, &None);
    assert_eq!(marked["prediction_type"], "v_prediction");
    assert_eq!(marked["timestep_spacing"], "trailing");
    assert_eq!(marked["rescale_betas_zero_snr"], true);
}

#[test]
fn sd2_is_v_prediction_without_a_marker_unless_it_stopped_where_sd2_base_did() {
    let checkpoint = || {
        let mut ckpt = TensorMap::new();
        let spec = Spec {
            linear: true,
            ..sd1_spec()
        };
        add_unet(
            &mut ckpt,
            &Spec {
                arch: UnetArch {
                    block_out: vec![64, 128],
                    ..spec.arch
                },
                ..spec
            },
        );
        add_vae(&mut ckpt, &[32, 64], 1);
        add_open_clip(&mut ckpt, SD2_OPEN_CLIP, 64, 3, 64);
        ckpt
    };
    let converted = convert_single_file(checkpoint()).unwrap();
    assert_eq!(
        converted.scheduler_config["prediction_type"],
        "v_prediction"
    );
    let mut base = checkpoint();
    base.insert(
        "global_step".to_owned(),
        Tensor::new(&[875000i64], &Device::Cpu).unwrap(),
    );
    let converted = convert_single_file(base).unwrap();
    assert_eq!(converted.scheduler_config["prediction_type"], "epsilon");
}

#[test]
fn refuses_other_layouts() {
    let mut flux = TensorMap::new();
    for i in 0..3 {
        flux.insert(
            format!("double_blocks.{i}.img_attn.qkv.weight"),
            zeros(&[1]),
        );
    }
    flux.insert("img_in.weight".to_owned(), zeros(&[1]));
    let err = convert_single_file(flux).unwrap_err().to_string();
    assert!(
        err.contains("`double_blocks.*` (3), `img_in.*` (1)")
            && err.contains("only SD1.x, SD2.x and SDXL"),
        "{err}"
    );

    let lora = TensorMap::from([("lora_unet_x.lora_down.weight".to_owned(), zeros(&[1]))]);
    let err = convert_single_file(lora).unwrap_err().to_string();
    assert!(err.contains("looks like a LoRA"), "{err}");

    let mut refiner = TensorMap::new();
    add_unet(&mut refiner, &sdxl_spec());
    add_open_clip(&mut refiner, SDXL_REFINER_OPEN_CLIP, 128, 1, 32);
    let err = convert_single_file(refiner).unwrap_err().to_string();
    assert!(err.contains("refiner"), "{err}");
}

#[test]
fn names_missing_and_unexpected_tensors() {
    let mut ckpt = sd1_checkpoint();
    ckpt.remove(&format!("{UNET}output_blocks.2.0.skip_connection.bias"));
    match convert_single_file(ckpt).unwrap_err() {
        LdmError::Missing {
            component: Component::Unet,
            names,
        } => {
            assert_eq!(names, ["up_blocks.1.resnets.0.conv_shortcut.bias"])
        }
        other => panic!("{other}"),
    }

    let mut ckpt = sd1_checkpoint();
    ckpt.insert(format!("{UNET}input_blocks.1.2.extra.weight"), zeros(&[1]));
    ckpt.insert(format!("{VAE}encoder.extra.weight"), zeros(&[1]));
    let err = convert_single_file(ckpt).unwrap_err();
    assert!(
        matches!(&err, LdmError::Unexpected { component: Component::Unet, names } if names == &["input_blocks.1.2.extra.weight"]),
        "{err}"
    );

    let mut ckpt = sd1_checkpoint();
    ckpt.retain(|name, _| !name.starts_with(VAE));
    let err = convert_single_file(ckpt).unwrap_err().to_string();
    assert!(err.contains("vae lacks `first_stage_model.*`"), "{err}");

    let mut ckpt = sd1_checkpoint();
    ckpt.remove(&format!("{VAE}decoder.conv_in.weight"));
    let err = convert_single_file(ckpt).unwrap_err().to_string();
    assert!(err.contains("vae lacks `decoder.conv_in.weight`"), "{err}");

    let mut ckpt = sd1_checkpoint();
    ckpt.insert(
        format!("{UNET}input_blocks.4.0.in_layers.0.weight"),
        zeros(&[1]),
    );
    assert!(matches!(
        convert_single_file(ckpt).unwrap_err(),
        LdmError::Inconsistent {
            component: Component::Unet,
            ..
        }
    ));
}
