//! pixelgen's Stable Diffusion against diffusers, on tiny random-weight models of each
//! family (SD1.x, SD2.x v-prediction, SD-Turbo style, SDXL) with kohya and PEFT LoRAs.
//! `tests/fixtures/diffusion/make_fixtures.py` made the models and ran diffusers on the
//! same weights, prompts and noise; its images are the reference. The promise checked:
//! identical token ids, and images within 1/255 mean absolute difference.
#![cfg(feature = "backend")]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pixelgen_diffusion::{
    LoadedModel, LoraFile, ModelLocation, Noise, Request, Scheduler, Settings,
};
use pixelgen_test_support::fs::read_json;
use pixelgen_test_support::{fixtures, images};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct CaseLora {
    path: String,
    weight: f64,
}

#[derive(Debug, Deserialize)]
struct TokenIds {
    prompt: Vec<u32>,
    negative_prompt: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    prompt: String,
    negative_prompt: Option<String>,
    steps: usize,
    guidance: f64,
    scheduler: String,
    width: usize,
    height: usize,
    #[serde(default)]
    loras: Vec<CaseLora>,
    latents: String,
    expected: String,
    token_ids: HashMap<String, TokenIds>,
}

fn cases(family: &Path) -> Vec<Case> {
    read_json(&family.join("cases.json"))
}

fn flat(tensor: &Tensor) -> Vec<f32> {
    tensor
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The case's initial latents and, for ancestral sampling, the noise of each step.
fn noise(family: &Path, case: &Case) -> Noise {
    let tensors = candle_core::safetensors::load(family.join(&case.latents), &Device::Cpu).unwrap();
    let latents = flat(&tensors["latents"]);
    let steps = tensors.get("noise").map(|n| {
        (0..n.dim(0).unwrap())
            .map(|i| flat(&n.get(i).unwrap()))
            .collect()
    });
    Noise::Given {
        latents,
        steps,
        seed: 0,
    }
}

fn load(location: &ModelLocation, family: &Path, loras: &[CaseLora]) -> LoadedModel {
    let loras: Vec<LoraFile> = loras
        .iter()
        .map(|l| LoraFile {
            path: family.join(&l.path),
            weight: l.weight,
        })
        .collect();
    LoadedModel::load(location, &loras, &Device::Cpu, DType::F32, None)
        .unwrap_or_else(|e| panic!("loading {}: {e}", location.path().display()))
}

/// Checks the model's token ids for `case` against transformers'.
fn check_token_ids(model: &LoadedModel, label: &str, case: &Case) {
    for (tokenizer, ids) in &case.token_ids {
        let second = tokenizer == "tokenizer_2";
        assert_eq!(
            model.token_ids(&case.prompt, second).unwrap(),
            ids.prompt,
            "{label}: {tokenizer} ids of the prompt"
        );
        if let (Some(text), Some(expected)) = (&case.negative_prompt, &ids.negative_prompt) {
            assert_eq!(
                &model.token_ids(text, second).unwrap(),
                expected,
                "{label}: {tokenizer} ids of the negative prompt"
            );
        }
    }
}

/// pixelgen's image for `case` (whose noise is in `family`).
fn draw(model: &LoadedModel, family: &Path, case: &Case) -> image::RgbImage {
    let settings = Settings::new(
        case.width,
        case.height,
        case.steps,
        case.guidance,
        Scheduler::from_name(&case.scheduler).expect("known scheduler"),
    );
    let request = Request {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        noise: noise(family, case),
        init: None,
        control_images: Vec::new(),
    };
    model.generate(&settings, &[request]).unwrap().remove(0)
}

/// Runs every case of one family and checks each against diffusers.
fn family_matches_diffusers(name: &str) {
    let family = fixtures::family(name);
    let location = ModelLocation::Folder(family.join("model"));
    let mut failures = Vec::new();
    for case in cases(&family) {
        let model = load(&location, &family, &case.loras);
        check_token_ids(&model, &format!("{name}/{}", case.name), &case);
        let image = draw(&model, &family, &case);
        let expected = images::read_rgb(&family.join(&case.expected));
        let (mean, max) = images::difference(&image, &expected);
        eprintln!(
            "{name}/{}: mean abs difference {mean:.4}/255, max {max}/255",
            case.name
        );
        if mean > 1.0 {
            failures.push(format!("{}: mean {mean:.3}/255 (max {max})", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: images differ from diffusers beyond 1/255: {failures:?}"
    );
}

/// One entry of `layouts/layouts.json` (written by `make_layouts.py`).
#[derive(Debug, Deserialize)]
struct Layout {
    name: String,
    family: String,
    /// Relative to the layouts folder.
    model: String,
    loras: Vec<CaseLora>,
    case: String,
    expected: String,
    diffusers: bool,
    note: String,
}

/// Every way today's Hugging Face tools save a model or a LoRA loads, with diffusers'
/// pixels: tokenizer.json alone, fp16 variants, shards, fp32/bf16 storage, kohya and PEFT
/// spellings, DoRA. Prints the table docs/src/stable-diffusion.md shows ("Folder layouts").
#[test]
fn every_layout_loads_with_diffusers_pixels() {
    let layouts_dir = fixtures::diffusion().join("layouts");
    let layouts: Vec<Layout> = read_json(&layouts_dir.join("layouts.json"));
    assert!(layouts.len() >= 11, "{} layouts", layouts.len());
    let mut failures = Vec::new();
    eprintln!("| layout | loads | mean diff vs diffusers | what |");
    eprintln!("|---|---|---|---|");
    for layout in &layouts {
        let family = fixtures::family(&layout.family);
        let case = cases(&family)
            .into_iter()
            .find(|c| c.name == layout.case)
            .expect("the layout's case");
        let location = ModelLocation::Folder(layouts_dir.join(&layout.model));
        let loras: Vec<LoraFile> = layout
            .loras
            .iter()
            .map(|l| LoraFile {
                path: layouts_dir.join(&l.path),
                weight: l.weight,
            })
            .collect();
        let model = match LoadedModel::load(&location, &loras, &Device::Cpu, DType::F32, None) {
            Ok(model) => model,
            Err(e) => {
                eprintln!("| {} | no: {e} | | {} |", layout.name, layout.note);
                failures.push(format!("{}: does not load: {e}", layout.name));
                continue;
            }
        };
        check_token_ids(&model, &layout.name, &case);
        let image = draw(&model, &family, &case);
        let expected = images::read_rgb(&layouts_dir.join(&layout.expected));
        let (mean, max) = images::difference(&image, &expected);
        let reference = if layout.diffusers {
            ""
        } else {
            " (reference: the same LoRA under diffusers' names)"
        };
        eprintln!(
            "| {} | yes | {mean:.4}/255 (max {max}){reference} | {} |",
            layout.name, layout.note
        );
        if mean > 1.0 {
            failures.push(format!("{}: mean {mean:.3}/255 (max {max})", layout.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn sd1_matches_diffusers() {
    family_matches_diffusers("sd1");
}

#[test]
fn sd2_v_prediction_matches_diffusers() {
    family_matches_diffusers("sd2v");
}

#[test]
fn turbo_style_few_steps_match_diffusers() {
    family_matches_diffusers("sdturbo");
}

#[test]
fn sdxl_matches_diffusers() {
    family_matches_diffusers("sdxl");
}

/// A single-file (LDM layout) copy of the SD1 model draws diffusers' images of every SD1
/// case, LoRAs and Euler sampling included: the file carries no scheduler config, and the
/// one pixelgen gives it must be the one `from_single_file` gives (SD1.5's, whose missing
/// `timestep_spacing` means `linspace` for Euler), and the same pixels as the folder.
#[test]
fn single_file_checkpoint_matches_diffusers_and_its_folder() {
    let family = fixtures::family("sd1");
    let single = ModelLocation::SingleFile(family.join("single/tiny-sd1.safetensors"));
    let folder = ModelLocation::Folder(family.join("model"));
    let mut failures = Vec::new();
    for case in cases(&family) {
        let image = draw(&load(&single, &family, &case.loras), &family, &case);
        let expected = images::read_rgb(&family.join(&case.expected));
        let (mean, max) = images::difference(&image, &expected);
        eprintln!(
            "sd1 single file/{}: mean {mean:.4}/255, max {max}/255",
            case.name
        );
        if mean > 1.0 {
            failures.push(format!("{}: mean {mean:.3}/255 (max {max})", case.name));
        }
        let from_folder = draw(&load(&folder, &family, &case.loras), &family, &case);
        if images::difference(&image, &from_folder) != (0.0, 0) {
            failures.push(format!("{}: single file and folder differ", case.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[derive(Debug, Deserialize)]
struct TokenizerCase {
    text: String,
    tokenizer: String,
    ids: Vec<u32>,
}

/// Tricky texts (case, whitespace, punctuation, apostrophes, digits, accents, emoji,
/// truncation, empty) give exactly the slow CLIPTokenizer's ids.
#[test]
fn tokenizer_matches_transformers() {
    let cases: Vec<TokenizerCase> = read_json(&fixtures::diffusion().join("tokenizer_cases.json"));
    assert!(!cases.is_empty());
    for case in cases {
        // The two pad conventions: end-of-text (SD1, SDXL's first) and `!` (SD2, SDXL's second).
        let dir = match case.tokenizer.as_str() {
            "tokenizer" => fixtures::tiny_model("sd1").join("tokenizer"),
            _ => fixtures::tiny_model("sdxl").join("tokenizer_2"),
        };
        let tokenizer = pixelgen_diffusion::tokenizer::ClipTokenizer::from_dir(&dir).unwrap();
        assert_eq!(
            tokenizer.encode(&case.text).unwrap(),
            case.ids,
            "{:?} with {}",
            case.text,
            case.tokenizer
        );
    }
}
