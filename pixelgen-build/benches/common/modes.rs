//! The conditioned modes of `cargo bench --bench diffusion`: img2img, inpainting, ControlNet
//! and seamless tiling at SD1.5 size, pixelgen against diffusers on the same model, inputs
//! and initial latents (`diffusers_peer.py prepare-modes` and `modes`).
//!
//! What each side draws (the constants match the peer's):
//! - img2img at strength [`IMG2IMG_STRENGTH`]: the init image's latent mean noised to the
//!   first kept step, then `int(steps × strength)` steps;
//! - inpainting with the 4-channel model and a mask, at strength 1 (the known latents
//!   re-noised and blended back after every step);
//! - one ControlNet (SD1.5's down path, random weights) at scale [`CONTROL_SCALE`];
//! - tiling on both axes (every padded convolution of the UNet and VAE decoder circular).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use pixelgen_build::generate::diffusion::{
    ControlNet, ControlUse, InitImage, LoadedModel, Noise, Request, Settings, Tiling,
    prepare_control_image,
};
use pixelgen_test_support::images;

pub const IMG2IMG_STRENGTH: f64 = 0.5;
pub const CONTROL_SCALE: f64 = 1.0;

/// The modes in table order, as the peer names them.
pub const MODES: [&str; 4] = ["img2img", "inpaint", "controlnet", "tiling"];

/// The table's label of a mode.
pub fn label(mode: &str) -> String {
    match mode {
        "img2img" => format!("img2img, strength {IMG2IMG_STRENGTH}"),
        "inpaint" => "inpainting, 4-channel UNet, mask, strength 1".into(),
        "controlnet" => format!("ControlNet (SD1.5 size), scale {CONTROL_SCALE}"),
        "tiling" => "tiling XY (circular padding)".into(),
        other => other.into(),
    }
}

/// One mode's measurement on pixelgen's side.
pub struct ModeRun {
    pub mode: &'static str,
    /// Best of the runs, seconds.
    pub seconds: f64,
    /// UNet calls (denoising steps) the drawing ran.
    pub steps: usize,
    pub image: PathBuf,
}

struct StepCounter(usize);

impl pixelgen_build::generate::diffusion::PhaseTimes for StepCounter {
    fn record(
        &mut self,
        phase: pixelgen_build::generate::diffusion::Phase,
        _: std::time::Duration,
    ) {
        if phase == pixelgen_build::generate::diffusion::Phase::UnetStep {
            self.0 += 1;
        }
    }
}

/// Draws each mode `image_runs` times with `model` (already loaded: loading is not timed)
/// and saves the last image of each as `pixelgen_MODE.png` in `run_dir`. `inputs` is
/// `diffusers_peer.py prepare-modes`'s folder.
pub fn measure(
    model: &LoadedModel,
    base: &Settings,
    prompt: &str,
    latents: &[f32],
    inputs: &Path,
    image_runs: usize,
    run_dir: &Path,
) -> Result<Vec<ModeRun>, String> {
    let open = |name: &str| images::open(&inputs.join(name));
    let init = open("init.png")?;
    let mask = open("mask.png")?;
    let control = open("control.png")?.to_rgb8();
    let controlnet = Arc::new(
        ControlNet::load(&inputs.join("controlnet"), &Device::Cpu, DType::F32)
            .map_err(|e| format!("ControlNet: {e}"))?,
    );
    let request = Request {
        prompt: prompt.into(),
        negative_prompt: None,
        noise: Noise::Given {
            latents: latents.to_vec(),
            steps: None,
            seed: 0,
        },
        init: None,
        control_images: Vec::new(),
    };
    let mut runs = Vec::new();
    for mode in MODES {
        let (settings, request) = match mode {
            "img2img" => (
                Settings {
                    strength: IMG2IMG_STRENGTH,
                    ..base.clone()
                },
                Request {
                    init: Some(InitImage::from_images(&init, None)),
                    ..request.clone()
                },
            ),
            "inpaint" => (
                base.clone(),
                Request {
                    init: Some(InitImage::from_images(&init, Some(&mask))),
                    ..request.clone()
                },
            ),
            "controlnet" => (
                Settings {
                    controlnets: vec![ControlUse {
                        model: controlnet.clone(),
                        scale: CONTROL_SCALE,
                        start: 0.0,
                        end: 1.0,
                    }],
                    ..base.clone()
                },
                Request {
                    control_images: vec![prepare_control_image(
                        &control,
                        base.width as u32,
                        base.height as u32,
                    )],
                    ..request.clone()
                },
            ),
            _ => (
                Settings {
                    tiling: Some(Tiling::XY),
                    ..base.clone()
                },
                request.clone(),
            ),
        };
        let mut best = f64::INFINITY;
        let mut steps = StepCounter(0);
        let mut image = None;
        for _ in 0..image_runs {
            steps.0 = 0;
            let start = Instant::now();
            let drawn = model
                .generate_timed(&settings, std::slice::from_ref(&request), &mut steps)
                .map_err(|e| format!("{mode}: {e}"))?
                .remove(0);
            best = best.min(start.elapsed().as_secs_f64());
            image = Some(drawn);
        }
        let path = run_dir.join(format!("pixelgen_{mode}.png"));
        image
            .expect("at least one run")
            .save(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        runs.push(ModeRun {
            mode,
            seconds: best,
            steps: steps.0,
            image: path,
        });
    }
    Ok(runs)
}
