//! Trained LoRAs in a run: the ones stale frames need, and training them before those
//! frames are drawn.

use super::check::Entry;
use super::*;
use crate::plan::PlannedLora;

/// The trained LoRAs that stale frames about to be drawn need (each once, in plan
/// order): frames whose raw image is cached are finished without the model.
pub(super) fn loras_to_train<'p>(
    plan: &'p Plan,
    entries: &[Entry<'_>],
    cache: &Cache,
) -> Vec<&'p PlannedLora> {
    let mut needed = std::collections::BTreeSet::new();
    for entry in entries.iter().filter(|entry| entry.to_draw()) {
        let planned = entry.planned;
        if planned.loras.iter().all(|l| l.trained.is_none()) {
            continue;
        }
        let draws = planned
            .frames
            .iter()
            .zip(&entry.lookups)
            .any(|(frame, lookup)| {
                !matches!(lookup, Lookup::Hit { .. })
                    && frame
                        .raw
                        .is_none_or(|raw| !cache.raw_path_of(&raw).is_file())
            });
        if draws {
            needed.extend(planned.loras.iter().filter_map(|l| l.trained.as_ref()));
        }
    }
    plan.loras
        .iter()
        .filter(|lora| needed.contains(&lora.spec.name))
        .collect()
}

/// What training reads besides the LoRA and the environment (device, hub cache): the
/// plan, where its model is found, the cache it trains into.
pub(super) struct Trainer<'a> {
    pub plan: &'a Plan,
    pub project: &'a Project,
    pub cache: &'a Cache,
}

impl Trainer<'_> {
    /// Trains `planned` into the cache.
    pub fn train(
        &self,
        planned: &PlannedLora,
        environment: &Environment,
        progress: &mut dyn Progress,
        timings: &mut Timings,
    ) -> Result<(), Error> {
        let spec = &planned.spec;
        let failed = |message: String| {
            Error::Train(Box::new(
                crate::diagnostics::Diagnostic::new(
                    &self.plan.source,
                    spec.span.clone(),
                    format!("trained LoRA `{}`: {message}", spec.name),
                )
                .label("while training this LoRA")
                .help("check its `model` and `images`; `cargo pixelgen train-lora` runs the same training by hand"),
            ))
        };
        #[cfg(feature = "diffusion")]
        {
            struct Steps<'a> {
                progress: &'a mut dyn Progress,
                lora: &'a LoraName,
                done: usize,
                steps: usize,
            }
            impl crate::train::TrainingProgress for Steps<'_> {
                fn started(&mut self, first: usize, steps: usize) {
                    (self.done, self.steps) = (first, steps);
                }
                fn step(&mut self, loss: f32) {
                    self.done += 1;
                    self.progress
                        .training(self.lora, self.done, self.steps, loss);
                }
            }
            let start = std::time::Instant::now();
            let checkpoint = self.cache.lora_checkpoint_path_of(&planned.key);
            let fingerprint = planned.key.to_hex();
            let job = crate::train::TrainingJob {
                model: &spec.model,
                model_dir: self.project.manifest_dir(),
                images: &planned.images,
                settings: &spec.settings,
                output: &planned.file,
                checkpoint: &checkpoint,
                checkpoint_every: TRAINING_CHECKPOINT_EVERY,
                fingerprint: &fingerprint,
            };
            let mut steps = Steps {
                progress,
                lora: &spec.name,
                done: 0,
                steps: spec.settings.steps,
            };
            self.cache
                .prepare()
                .map_err(|e| failed(format!("cannot prepare the cache: {e}")))?;
            crate::train::run(&job, environment, &mut steps).map_err(|e| failed(e.to_string()))?;
            timings.add(Stage::Train, start.elapsed());
            Ok(())
        }
        #[cfg(not(feature = "diffusion"))]
        {
            let _ = (progress, planned, timings, environment);
            Err(failed(
                "training needs pixelgen-build's `diffusion` feature (on by default); trained LoRAs already in cache/ still build offline".into(),
            ))
        }
    }
}
