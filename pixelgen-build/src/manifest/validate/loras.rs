//! The LoRA checks: the LoRAs a sprite uses (a file or one of `trained_loras`), and the
//! manifest's `trained_loras` with their training settings.

use std::ops::Range;
use std::path::Path;

use crate::identity::LoraName;
use crate::input_file::{FileKind, InputFileError, MAX_LORA_BYTES};
use crate::manifest::merge::Merged;
use crate::manifest::raw::{RawLora, RawManifest, RawTrainedLora};
use crate::manifest::{LoraSource, LoraSpec, MAX_RESOLUTION, TrainedLoraSpec, TrainingSettings};

use super::{Invalid, SpriteEntry, Validator, occurrences};

impl Validator<'_> {
    pub(super) fn loras(
        &self,
        entry: &SpriteEntry<'_>,
        loras: Merged<&[RawLora]>,
        trained_loras: &[TrainedLoraSpec],
    ) -> Result<Vec<LoraSpec>, Invalid> {
        let span = &entry.span;
        let mut specs = Vec::new();
        for lora in loras.value.into_iter().flatten() {
            let written = match (&lora.path, &lora.trained) {
                (Some(path), None) => path,
                (None, Some(name)) => name,
                (both, _) => {
                    let at = self.field_span(entry, "loras", &loras);
                    return Err(self
                        .error(
                            at,
                            if both.is_some() {
                                format!("sprite `{}`: a LoRA has both `path` and `trained`", entry.name)
                            } else {
                                format!("sprite `{}`: a LoRA has neither `path` nor `trained`", entry.name)
                            },
                        )
                        .label("one of the two")
                        .help("write `(path: \"style.safetensors\", weight: 0.8)` for a LoRA file, or `(trained: \"style\", weight: 0.8)` for one of `trained_loras`")
                        .into());
                }
            };
            let literals = self.locator.string_literals(written);
            if !lora.weight.is_finite() {
                let at = literals.first().cloned().unwrap_or(span.clone());
                return Err(self
                    .error(
                        at,
                        format!("LoRA `{written}` has a weight that is not a number"),
                    )
                    .help("use a weight such as 0.8")
                    .into());
            }
            let lora_span = literals
                .iter()
                .find(|r| r.start >= span.end)
                .or(literals.first())
                .cloned()
                .unwrap_or(span.clone());
            if lora.trained.is_some() {
                let name = LoraName::from(written.as_str());
                if !trained_loras.iter().any(|t| t.name == name) {
                    let declared: Vec<&str> =
                        trained_loras.iter().map(|t| t.name.as_str()).collect();
                    let help = if declared.is_empty() {
                        format!(
                            "declare it: `trained_loras: {{ \"{name}\": (images: \"art/{name}\", model: \"...\") }}`"
                        )
                    } else {
                        format!(
                            "declared trained LoRAs: {}; add `\"{name}\": (images: ..., model: ...)` to `trained_loras` or fix the name",
                            declared.join(", ")
                        )
                    };
                    return Err(self
                        .error(
                            lora_span,
                            format!(
                                "sprite `{}` uses trained LoRA `{name}`, which is not declared",
                                entry.name
                            ),
                        )
                        .label("unknown trained LoRA")
                        .help(help)
                        .into());
                }
                specs.push(LoraSpec {
                    source: LoraSource::Trained(name),
                    weight: lora.weight,
                    span: lora_span,
                });
                continue;
            }
            let path = written;
            // A path that names something other than a file is refused now: hashing a FIFO
            // or a device would never end. A missing file is named when the plan hashes it.
            let resolved = self.dir.join(path);
            if let Err(error) = crate::input_file::check(&resolved, MAX_LORA_BYTES, "LoRA file")
                && !matches!(error, InputFileError::Missing { .. })
            {
                return Err(self
                    .error(lora_span, format!("LoRA `{path}`: {error}"))
                    .label("not a LoRA file")
                    .help("name a .safetensors LoRA file, relative to the folder of sprites.ron")
                    .into());
            }
            if pixelgen_diffusion::files::is_pickle(Path::new(path)) {
                return Err(self
                    .error(
                        lora_span,
                        format!("LoRA `{path}` is a pickle file, which pixelgen refuses: loading one can run arbitrary code"),
                    )
                    .label("pickle")
                    .help("use the LoRA's .safetensors file; convert once in Python with `safetensors.torch.save_file(torch.load(path, weights_only=True), \"lora.safetensors\")`")
                    .into());
            }
            specs.push(LoraSpec {
                source: LoraSource::File {
                    resolved,
                    path: path.clone(),
                },
                weight: lora.weight,
                span: lora_span,
            });
        }
        Ok(specs)
    }

    /// The manifest's `trained_loras`: each name a LoRA sprites can use, each setting in
    /// range, the image folder a folder of PNGs.
    pub(super) fn trained_loras(&self, raw: &RawManifest) -> Result<Vec<TrainedLoraSpec>, Invalid> {
        let section = self
            .locator
            .field_after(0, "trained_loras")
            .map_or(0, |f| f.end);
        let mut specs: Vec<TrainedLoraSpec> = Vec::new();
        for (occurrence_of, (name, lora)) in occurrences(&raw.trained_loras.0) {
            let span = self
                .locator
                .map_keys(name)
                .into_iter()
                .filter(|r| r.start >= section)
                .nth(occurrence_of)
                .unwrap_or(0..0);
            if occurrence_of > 0 {
                return Err(self
                    .error(span, format!("duplicate trained LoRA name `{name}`"))
                    .label("defined again here")
                    .help("trained LoRA names must be unique: rename one of them")
                    .into());
            }
            specs.push(self.trained_lora(name, lora, span)?);
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }

    fn trained_lora(
        &self,
        name: &str,
        raw: &RawTrainedLora,
        span: Range<usize>,
    ) -> Result<TrainedLoraSpec, Invalid> {
        let at = |field: &str| {
            self.locator
                .field_after(span.end, field)
                .map(|f| self.locator.value_after(&f))
                .unwrap_or(span.clone())
        };
        let refuse = |field: &str, message: String, label: &str, help: String| -> Invalid {
            self.error(at(field), format!("trained LoRA `{name}`: {message}"))
                .label(label)
                .help(help)
                .into()
        };
        let defaults = TrainingSettings::default();
        let images_dir = self.dir.join(&raw.images);
        match crate::input_file::non_file_kind(&images_dir) {
            Some(FileKind::Directory) => {}
            _ => {
                return Err(refuse(
                    "images",
                    format!("`{}` is not a folder", raw.images),
                    "not a folder of images",
                    "name the folder of PNG images (and NAME.txt captions) to train on, relative to the folder of sprites.ron".into(),
                ));
            }
        }
        if raw.model.trim().is_empty() {
            return Err(refuse(
                "model",
                "no base model".into(),
                "empty model",
                "name the model it is trained on, as a Diffusion generator does (usually the one its sprites draw with)".into(),
            ));
        }
        if pixelgen_diffusion::files::is_pickle(Path::new(&raw.model)) {
            return Err(refuse(
                "model",
                format!(
                    "model `{}` is a pickle checkpoint, which pixelgen refuses: loading one can run arbitrary code",
                    raw.model
                ),
                "pickle",
                "use the model's .safetensors file or a diffusers folder".into(),
            ));
        }
        let rank = raw.rank.unwrap_or(defaults.rank as u32);
        if !(1..=1024).contains(&rank) {
            return Err(refuse(
                "rank",
                format!("rank {rank} is out of range"),
                "rank",
                "use a rank from 1 to 1024 (4 to 32 is usual)".into(),
            ));
        }
        let alpha = raw.alpha.unwrap_or(f64::from(rank));
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(refuse(
                "alpha",
                format!("alpha {alpha} is not a positive number"),
                "alpha",
                "leave `alpha` out to use the rank, or give a positive number".into(),
            ));
        }
        let steps = raw.steps.unwrap_or(defaults.steps as u32);
        if !(1..=1_000_000).contains(&steps) {
            return Err(refuse(
                "steps",
                format!("{steps} training steps is out of range"),
                "steps",
                "use 1 to 1000000 steps (hundreds to a few thousand is usual)".into(),
            ));
        }
        let learning_rate = raw.learning_rate.unwrap_or(defaults.learning_rate);
        if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate < 1.0) {
            return Err(refuse(
                "learning_rate",
                format!("learning rate {learning_rate} is out of range"),
                "learning rate",
                "use a learning rate above 0 and below 1 (1e-4 is usual)".into(),
            ));
        }
        let batch = raw.batch.unwrap_or(defaults.batch as u32);
        if !(1..=256).contains(&batch) {
            return Err(refuse(
                "batch",
                format!("batch {batch} is out of range"),
                "batch",
                "use 1 to 256 images per step".into(),
            ));
        }
        if let Some((width, height)) = raw.resolution {
            let drawable =
                |side: u32| side.is_multiple_of(8) && (8..=MAX_RESOLUTION).contains(&side);
            if !drawable(width) || !drawable(height) {
                return Err(refuse(
                    "resolution",
                    format!("resolution {width}×{height} cannot be trained at"),
                    "not a multiple of 8 in range",
                    format!(
                        "each side is a multiple of 8 from 8 to {MAX_RESOLUTION}; leave it out to train at the model's own size"
                    ),
                ));
            }
        }
        let caption = raw.caption.clone().unwrap_or(defaults.caption);
        if caption.trim().is_empty() {
            return Err(refuse("caption", "the default caption is empty".into(), "empty", "give images without a NAME.txt a caption with a trigger word, e.g. `caption: \"pixel art sprite, mygame style\"`".into()));
        }
        let background = match &raw.background {
            None => defaults.background,
            Some(hex) => self.color(
                hex,
                &span,
                format!("trained LoRA `{name}`: background `{hex}` is not a colour"),
                "write the background as `background: \"#ffffff\"`",
            )?,
        };
        Ok(TrainedLoraSpec {
            name: LoraName::from(name),
            images: raw.images.clone(),
            images_dir,
            model: raw.model.clone(),
            settings: TrainingSettings {
                rank: rank as usize,
                alpha,
                steps: steps as usize,
                learning_rate,
                batch: batch as usize,
                resolution: raw.resolution,
                seed: raw.seed.unwrap_or(defaults.seed),
                caption,
                background,
                conv: raw.conv.unwrap_or(defaults.conv),
                text_encoder: raw.text_encoder.unwrap_or(defaults.text_encoder),
            },
            span,
        })
    }
}
