//! Conditioned drawing against diffusers 0.42: img2img at several strengths (SD1 and
//! SDXL, DDIM, Euler and Euler-ancestral), inpainting with a 4-channel UNet (blending) and
//! a 9-channel inpainting UNet, ControlNet at two scales (SD1 and SDXL), over a window of
//! the steps, two at once and with a control image that must be resized, and seamless
//! tiling on x, y and both; and each mode with LoRAs (kohya's and peft's layouts, loaded by
//! diffusers through peft). `tests/fixtures/diffusion/make_conditioned.py` made the
//! models (ControlNets with every weight random, zero convolutions included) and ran
//! diffusers; its README says what each case checks. Goal: ≤ 0.5/255 mean difference.
#![cfg(feature = "backend")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use pixelgen_diffusion::{
    ControlNet, ControlUse, InitImage, LoadedModel, ModelLocation, Noise, Request, Scheduler,
    Settings, Tiling, prepare_control_image,
};
use pixelgen_test_support::fs::read_json;
use pixelgen_test_support::{fixtures, images};
use serde::Deserialize;

/// The promise: at most this mean difference from diffusers, in levels of 255.
const GOAL: f64 = 0.5;

#[derive(Debug, Deserialize)]
struct CaseControlNet {
    path: String,
    scale: f64,
    start: f64,
    end: f64,
}

#[derive(Debug, Deserialize)]
struct CaseLora {
    /// In the family's fixture folder.
    path: String,
    weight: f64,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    model: String,
    prompt: String,
    negative_prompt: Option<String>,
    steps: usize,
    guidance: f64,
    scheduler: String,
    width: usize,
    height: usize,
    init_image: Option<String>,
    strength: Option<f64>,
    mask: Option<String>,
    controlnets: Vec<CaseControlNet>,
    control_image: Option<String>,
    tiling: Option<String>,
    #[serde(default)]
    loras: Vec<CaseLora>,
    latents: String,
    expected: String,
    steps_run: usize,
}

fn folder() -> PathBuf {
    fixtures::diffusion().join("conditioned")
}

fn cases() -> Vec<Case> {
    read_json(&folder().join("cases.json"))
}

fn noise(path: &Path) -> Noise {
    let flat = |t: &candle_core::Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    Noise::Given {
        latents: flat(&tensors["latents"]),
        steps: tensors.get("noise").map(|n| {
            (0..n.dim(0).unwrap())
                .map(|i| flat(&n.get(i).unwrap()))
                .collect()
        }),
        seed: 0,
    }
}

fn open(path: &Path) -> image::DynamicImage {
    images::open(path).unwrap()
}

/// Loads models (with their LoRAs) and ControlNets once per path.
#[derive(Default)]
struct Models {
    models: HashMap<String, LoadedModel>,
    controlnets: HashMap<String, Arc<ControlNet>>,
}

impl Models {
    fn model(&mut self, relative: &str) -> &LoadedModel {
        self.model_with(relative, &[])
    }

    /// The model at `relative` with `loras` merged (paths in the model's family folder).
    fn model_with(&mut self, relative: &str, loras: &[CaseLora]) -> &LoadedModel {
        let key = loras.iter().fold(relative.to_string(), |key, lora| {
            format!("{key}+{}*{}", lora.path, lora.weight)
        });
        self.models.entry(key).or_insert_with(|| {
            let model = fixtures::diffusion().join(relative);
            let family = model.parent().expect("a family folder").to_path_buf();
            let loras: Vec<_> = loras
                .iter()
                .map(|lora| pixelgen_diffusion::LoraFile {
                    path: family.join(&lora.path),
                    weight: lora.weight,
                })
                .collect();
            let location = ModelLocation::Folder(model);
            LoadedModel::load(&location, &loras, &Device::Cpu, DType::F32, None).unwrap()
        })
    }

    fn controlnet(&mut self, relative: &str) -> Arc<ControlNet> {
        self.controlnets
            .entry(relative.to_string())
            .or_insert_with(|| {
                Arc::new(
                    ControlNet::load(&folder().join(relative), &Device::Cpu, DType::F32).unwrap(),
                )
            })
            .clone()
    }
}

/// pixelgen's image for `case`.
fn draw(models: &mut Models, case: &Case) -> image::RgbImage {
    let (settings, requests) = inputs(models, case);
    let mut steps = 0;
    let mut counter = StepCounter(&mut steps);
    let image = models
        .model_with(&case.model, &case.loras)
        .generate_timed(&settings, &requests, &mut counter)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
        .remove(0);
    assert_eq!(steps, case.steps_run, "{}: steps run", case.name);
    image
}

/// What pixelgen is given for `case`: its settings and its one request.
fn inputs(models: &mut Models, case: &Case) -> (Settings, Vec<Request>) {
    let controlnets: Vec<ControlUse> = case
        .controlnets
        .iter()
        .map(|c| ControlUse {
            model: models.controlnet(&c.path),
            scale: c.scale,
            start: c.start,
            end: c.end,
        })
        .collect();
    let settings = Settings {
        strength: case.strength.unwrap_or(1.0),
        tiling: case
            .tiling
            .as_deref()
            .map(|t| Tiling::from_name(t).expect("known tiling")),
        controlnets,
        ..Settings::new(
            case.width,
            case.height,
            case.steps,
            case.guidance,
            Scheduler::from_name(&case.scheduler).expect("known scheduler"),
        )
    };
    let init = case.init_image.as_ref().map(|image| {
        let mask = case.mask.as_ref().map(|m| open(&folder().join(m)));
        InitImage::from_images(&open(&folder().join(image)), mask.as_ref())
    });
    let control_images = match &case.control_image {
        Some(path) => {
            let image = open(&folder().join(path)).to_rgb8();
            let prepared = prepare_control_image(&image, case.width as u32, case.height as u32);
            vec![prepared; case.controlnets.len()]
        }
        None => Vec::new(),
    };
    let request = Request {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        noise: noise(&folder().join(&case.latents)),
        init,
        control_images,
    };
    (settings, vec![request])
}

struct StepCounter<'a>(&'a mut usize);

impl pixelgen_diffusion::PhaseTimes for StepCounter<'_> {
    fn record(&mut self, phase: pixelgen_diffusion::Phase, _: std::time::Duration) {
        if phase == pixelgen_diffusion::Phase::UnetStep {
            *self.0 += 1;
        }
    }
}

/// Every case within the goal of diffusers' image, and running as many steps as diffusers
/// ran (img2img keeps `int(steps × strength)`). Prints the table in
/// docs/src/stable-diffusion.md ("Conditioned drawing").
#[test]
fn conditioned_drawing_matches_diffusers() {
    let mut models = Models::default();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 24, "{} cases", cases.len());
    eprintln!("| case | steps run | mean diff vs diffusers | max |");
    eprintln!("|---|---|---|---|");
    for case in &cases {
        let image = draw(&mut models, case);
        let expected = images::read_rgb(&folder().join(&case.expected));
        let (mean, max) = images::difference(&image, &expected);
        eprintln!(
            "| {} | {} of {} | {mean:.4}/255 | {max} |",
            case.name, case.steps_run, case.steps
        );
        if mean > GOAL {
            failures.push(format!("{}: mean {mean:.3}/255 (max {max})", case.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The control image's resize is Pillow's LANCZOS, byte for byte (diffusers' own result is
/// `control_small_resized.png`).
#[test]
fn a_control_image_is_resized_as_diffusers_resizes_it() {
    let small = open(&folder().join("control_small.png")).to_rgb8();
    let expected = open(&folder().join("control_small_resized.png")).to_rgb8();
    let resized = prepare_control_image(&small, expected.width(), expected.height());
    assert_eq!(images::difference(&resized, &expected), (0.0, 0));
}

/// An SD 1.x ControlNet on the SDXL model is refused by name before any work, and so is a
/// strength that runs no step.
#[test]
fn what_cannot_work_is_refused_before_drawing() {
    let mut models = Models::default();
    let sd1_controlnet = models.controlnet("sd1-controlnet");
    let settings = Settings {
        controlnets: vec![ControlUse {
            model: sd1_controlnet,
            scale: 1.0,
            start: 0.0,
            end: 1.0,
        }],
        ..Settings::new(64, 64, 4, 5.0, Scheduler::Euler)
    };
    let error = models
        .model("sdxl/model")
        .check(&settings)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sd1-controlnet") && error.contains("made for"),
        "{error}"
    );
    let weak = Settings {
        strength: 0.1,
        ..Settings::new(64, 64, 4, 5.0, Scheduler::Euler)
    };
    let error = models
        .model("sd1/model")
        .check(&weak)
        .unwrap_err()
        .to_string();
    assert!(error.contains("runs no step"), "{error}");
}

/// Conditioned drawing is batched like plain drawing: two requests with different init
/// images, masks, control images and noise drawn in one batch give each request's image
/// drawn alone (the batch shares the UNet calls, not the pictures).
#[test]
fn a_batch_of_conditioned_requests_draws_each_as_alone() {
    let mut models = Models::default();
    let all = cases();
    let case = |name: &str| all.iter().find(|c| c.name == name).expect("case");
    for (first, second) in [
        ("img2img_sd1_ddim_s50", "img2img_sd1_lora_s60"),
        ("inpaint4_sd1_ddim", "inpaint4_sd1_lora"),
        ("controlnet_sd1_s100", "controlnet_sd1_lora"),
    ] {
        let (a, b) = (case(first), case(second));
        let alone = draw(&mut models, a);
        // The second request: the first case's settings with the second's init image,
        // noise and prompt, and the control image upside down.
        let (settings, mut requests) = inputs(&mut models, a);
        let (_, other) = inputs(&mut models, b);
        let mut other = other.into_iter().next().expect("a request");
        for image in &mut other.control_images {
            image::imageops::flip_vertical_in_place(image);
        }
        if let Some(init) = &mut other.init {
            image::imageops::flip_horizontal_in_place(&mut init.image);
        }
        requests.push(other.clone());
        let model = models.model(&a.model);
        let batch = model.generate(&settings, &requests).unwrap();
        let second_alone = model
            .generate(&settings, std::slice::from_ref(&other))
            .unwrap()
            .remove(0);
        for (drawn, expected, name) in [
            (&batch[0], &alone, first),
            (&batch[1], &second_alone, second),
        ] {
            let (mean, largest) = images::difference(drawn, expected);
            assert!(
                mean < 0.05 && largest <= 2,
                "{first} batched with {second}: {name}'s image differs from its own drawing by {mean}/255 (largest {largest})"
            );
        }
        let (mean, _) = images::difference(&batch[0], &batch[1]);
        assert!(mean > 1.0, "{first}: the two requests drew the same image");
    }
}
