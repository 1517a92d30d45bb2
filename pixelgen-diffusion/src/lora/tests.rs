use super::keys::{peft_pattern_matches, unsupported_variant};
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
    let metadata =
        metadata.map(|json| HashMap::from([("lora_adapter_metadata".to_owned(), json.to_owned())]));
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
fn dora_rescales_each_output_channel_of_the_merged_weight_to_its_magnitude() {
    // W + ΔW = [[3, 4], [0, 1]] + 0.5·[[0, 0], [2, 0]] = [[3, 4], [1, 1]]:
    // row norms 5 and √2, rescaled to the magnitudes 10 and 2.
    for spelling in ["lora_magnitude_vector", "lora_magnitude_vector.weight"] {
        let mut w = weights(
            &[(&format!("{TO_Q}.weight"), t(&[3., 4., 0., 1.], &[2, 2]))],
            &[],
        );
        let lora = file(
            &[
                (&format!("unet.{TO_Q}.lora_A.weight"), t(&[1., 0.], &[1, 2])),
                (&format!("unet.{TO_Q}.lora_B.weight"), t(&[0., 2.], &[2, 1])),
                (&format!("unet.{TO_Q}.{spelling}"), t(&[10., 2.], &[2])),
            ],
            None,
        );
        apply_lora(&mut w, &sd1_layout(), &lora.0, 0.5).unwrap();
        let merged = values(&w.unet[&format!("{TO_Q}.weight")]);
        let root2 = 2f32.sqrt();
        let expected = [6., 8., 2. / root2, 2. / root2];
        for (got, want) in merged.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{spelling}: {merged:?}");
        }
    }
    // kohya/LyCORIS DoRA and a magnitude of the wrong length are named, not merged.
    let mut w = weights(
        &[(&format!("{TO_Q}.weight"), t(&[3., 4., 0., 1.], &[2, 2]))],
        &[],
    );
    let lora = file(
        &[
            (&format!("unet.{TO_Q}.lora_A.weight"), t(&[1., 0.], &[1, 2])),
            (&format!("unet.{TO_Q}.lora_B.weight"), t(&[0., 2.], &[2, 1])),
            (
                &format!("unet.{TO_Q}.lora_magnitude_vector"),
                t(&[1., 1., 1.], &[3]),
            ),
        ],
        None,
    );
    let error = apply_lora(&mut w, &sd1_layout(), &lora.0, 1.0)
        .unwrap_err()
        .to_string();
    assert!(error.contains("3 values for 2 output channels"), "{error}");
}

#[test]
fn names_unsupported_variants() {
    let cases = [
        ("lora_unet_x.hada_w1_a", "loha"),
        ("lora_unet_x.lokr_w1", "lokr"),
        ("lora_unet_x.dora_scale", "dora"),
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
        "unet.x.lora_magnitude_vector",
        "unet.x.lora_magnitude_vector.weight",
    ] {
        assert_eq!(unsupported_variant(key), None, "{key}");
    }

    let lora = file(&[("lora_unet_x.hada_w1_a", t(&[1.], &[1, 1]))], None);
    let err = apply_lora(&mut sd1_weights(), &sd1_layout(), &lora.0, 1.0).unwrap_err();
    assert!(matches!(err, LoraError::Unsupported { variant, .. } if variant.starts_with("LoHa")));
    let message = err.to_string();
    assert!(
        message.contains("lora_unet_x.hada_w1_a")
            && message.contains("use a LoRA version of this file"),
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
