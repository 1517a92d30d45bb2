//! The Diffusion backend's own settings check: a model that can be a diffusers folder, a
//! `.safetensors` checkpoint or a Hugging Face id (never a pickle), and sampling settings
//! it can draw with.

use std::path::Path;

use super::{DiffusionSpec, Scheduler};
use crate::generate::Conditioning;
use crate::generate::settings::{Refusal, SettingsContext, check_init, check_sampling};
use crate::input_file::{FileKind, InputFileError, MAX_MODEL_FILE_BYTES};

/// A `Diffusion(...)` generator's settings as written (its defaults applied).
pub struct DiffusionSettings<'a> {
    pub model: &'a str,
    pub steps: u32,
    pub guidance: f32,
    pub scheduler: Scheduler,
    pub resolution: Option<(u32, u32)>,
}

impl DiffusionSpec {
    /// Checks `settings`; the spec a Diffusion sprite draws with.
    pub fn check(
        settings: DiffusionSettings<'_>,
        context: &SettingsContext<'_>,
    ) -> Result<DiffusionSpec, Refusal> {
        let DiffusionSettings {
            model,
            steps,
            guidance,
            scheduler,
            resolution,
        } = settings;
        check_model(model, context.manifest_dir)?;
        check_sampling(steps, guidance, resolution)?;
        Ok(DiffusionSpec {
            model: model.to_owned(),
            steps,
            guidance,
            scheduler,
            resolution,
        })
    }
}

/// A Diffusion model's name: not empty, a folder, file or repo id, never a pickle.
fn check_model(model: &str, manifest_dir: &Path) -> Result<(), Refusal> {
    if model.trim().is_empty() {
        return Err(Refusal::new(
            "model",
            "the Diffusion generator needs a model",
            "empty model",
            "set `model: \"stabilityai/sd-turbo\"` or a local folder",
        ));
    }
    // A local model is a diffusers folder or a single .safetensors file; anything else
    // there (a FIFO, a device) is refused before anything tries to read it.
    let local = manifest_dir.join(model);
    match crate::input_file::non_file_kind(&local) {
        Some(FileKind::Directory) | None => {}
        Some(kind) => {
            return Err(Refusal::new(
                "model",
                format!("model `{model}` is {kind}"),
                "not a model",
                "name a diffusers folder, a .safetensors checkpoint or a Hugging Face id",
            ));
        }
    }
    if let Err(error @ InputFileError::TooLarge { .. }) =
        crate::input_file::check(&local, MAX_MODEL_FILE_BYTES, "model file")
    {
        return Err(Refusal::new(
            "model",
            format!("model `{model}`: {error}"),
            "too large",
            "name the model's .safetensors checkpoint",
        ));
    }
    if pixelgen_diffusion::files::is_pickle(Path::new(model)) {
        return Err(Refusal::new(
            "model",
            format!(
                "model `{model}` is a pickle checkpoint, which pixelgen refuses: loading one can run arbitrary code"
            ),
            "pickle",
            "use the model's .safetensors file or a diffusers folder; convert once in Python with `safetensors.torch.save_file(torch.load(path, weights_only=True), \"model.safetensors\")`",
        ));
    }
    Ok(())
}

/// Largest ControlNet `config.json` read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl DiffusionSpec {
    /// Checks what a sprite drawn with these settings is conditioned on: a strength that
    /// runs at least one step, an init image of the sprite's size (scaled up to the
    /// drawing, nearest neighbour) or of the drawing's `resolution`, a mask of the init
    /// image's size, ControlNets whose window is inside the steps and that were made for
    /// this model's family (when both configs can be read here).
    pub fn check_conditioning(
        &self,
        conditioning: &Conditioning,
        sprite_size: (u32, u32),
        context: &SettingsContext<'_>,
    ) -> Result<(), Refusal> {
        if let Some(init) = &conditioning.init {
            check_init(init, self.steps, self.resolution, sprite_size)?;
        }
        for controlnet in &conditioning.controlnets {
            let window = 0.0..=1.0;
            if !window.contains(&controlnet.start)
                || !window.contains(&controlnet.end)
                || controlnet.start > controlnet.end
                || !controlnet.scale.is_finite()
            {
                return Err(Refusal::new(
                    "controlnet",
                    format!(
                        "has ControlNet `{}` with scale {}, start {} and end {}",
                        controlnet.model, controlnet.scale, controlnet.start, controlnet.end
                    ),
                    "out of range",
                    "start and end are shares of the steps with 0 ≤ start ≤ end ≤ 1; the scale a finite number (1 is full strength)",
                )
                .at_literal(&controlnet.model));
            }
            self.check_controlnet_family(&controlnet.model, context)?;
        }
        Ok(())
    }

    /// A ControlNet folder with a readable config, made for this model's text width
    /// (when the model is a local diffusers folder whose UNet config says it).
    fn check_controlnet_family(
        &self,
        controlnet: &str,
        context: &SettingsContext<'_>,
    ) -> Result<(), Refusal> {
        let config_path = Path::new(controlnet).join("config.json");
        let (resolved, text) = context.read(
            &config_path.to_string_lossy(),
            MAX_CONFIG_BYTES,
            "ControlNet config",
        );
        let unreadable = |why: String| {
            Refusal::new(
                "controlnet",
                format!("names ControlNet `{controlnet}`: {why}"),
                "not a ControlNet",
                "name a diffusers-layout ControlNet folder (config.json and diffusion_pytorch_model.safetensors), relative to sprites.ron",
            )
            .at_literal(controlnet)
        };
        let text = text.map_err(|e| unreadable(e.to_string()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| unreadable(format!("{} is not JSON: {e}", resolved.display())))?;
        let Some(theirs) = Family::of(&config) else {
            return Err(unreadable(format!(
                "{} has no cross_attention_dim",
                resolved.display()
            )));
        };
        let unet_config = context
            .manifest_dir
            .join(&self.model)
            .join("unet/config.json");
        if !unet_config.is_file() {
            // A Hugging Face id or a single file: the loader checks when it loads both.
            return Ok(());
        }
        let (_, unet_text) = context.read(
            &unet_config.to_string_lossy(),
            MAX_CONFIG_BYTES,
            "UNet config",
        );
        let ours = unet_text
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .as_ref()
            .and_then(Family::of);
        match ours {
            Some(ours) if ours != theirs => Err(Refusal::new(
                "controlnet",
                format!(
                    "names ControlNet `{controlnet}`, made for {theirs} models, and model `{}` is {ours}",
                    self.model
                ),
                "another model family",
                "use a ControlNet trained for this model's family (SD 1.x ControlNets for SD 1.x models, SDXL ones for SDXL)",
            )
            .at_literal(controlnet)),
            _ => Ok(()),
        }
    }
}

/// What makes a ControlNet fit a UNet's family, from their configs: the text
/// conditioning's width and whether it takes SDXL's added conditioning.
#[derive(PartialEq)]
struct Family {
    text_width: u64,
    sdxl: bool,
}

impl Family {
    fn of(config: &serde_json::Value) -> Option<Family> {
        Some(Family {
            text_width: config.get("cross_attention_dim")?.as_u64()?,
            sdxl: config.get("addition_embed_type").and_then(|t| t.as_str()) == Some("text_time"),
        })
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.text_width, self.sdxl) {
            (768, false) => f.write_str("SD 1.x"),
            (1024, false) => f.write_str("SD 2.x"),
            (2048, true) => f.write_str("SDXL"),
            (width, true) => write!(f, "SDXL-like (text width {width})"),
            (width, false) => write!(f, "SD-1/2-like (text width {width})"),
        }
    }
}
