//! The Diffusion backend's own settings check: a model that can be a diffusers folder, a
//! `.safetensors` checkpoint or a Hugging Face id (never a pickle), and sampling settings
//! it can draw with.

use std::path::Path;

use super::{DiffusionSpec, Scheduler};
use crate::generate::settings::{Refusal, SettingsContext, check_sampling};
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
