//! Trained LoRAs in a run: their status against the cache and the lock, the ones stale
//! frames need, and training them before those frames are drawn.

use super::*;

impl Session {
    /// Every trained LoRA's state, sorted by name.
    pub fn lora_statuses(&mut self) -> Vec<LoraStatus> {
        (0..self.trained.len())
            .map(|index| self.lora_status(index))
            .collect()
    }

    /// The cache's trained file for LoRA `index`, checked against the hash the lock
    /// recorded for the same key.
    pub(super) fn lora_lookup(&mut self, index: usize) -> Lookup {
        let planned = &self.trained[index];
        let key = planned.key.to_hex();
        let expected = self
            .lock
            .trained_loras
            .get(&self.manifest.trained_loras[index].name)
            .filter(|l| l.key == key && !l.output.is_empty())
            .map(|l| l.output.as_str());
        self.cache
            .lookup_lora(&planned.key, expected, &mut self.hasher)
    }

    /// Whether the trained LoRA `index` (into `trained`) is in the cache, and if not, why.
    pub(super) fn lora_status(&mut self, index: usize) -> LoraStatus {
        let lookup = self.lora_lookup(index);
        let planned = &self.trained[index];
        let spec = &self.manifest.trained_loras[index];
        let key = planned.key.to_hex();
        let locked = self.lock.trained_loras.get(&spec.name);
        let path = || planned.file.display().to_string();
        let reasons = match (&lookup, locked) {
            (Lookup::Hit { .. }, _) => Vec::new(),
            (Lookup::Corrupt { reason }, _) => {
                vec![format!("trained file corrupt ({}: {reason})", path())]
            }
            (Lookup::Missing, None) => vec!["new trained LoRA (not in sprites.lock)".to_owned()],
            (Lookup::Missing, Some(locked)) if locked.key != key => {
                let changes = planned.inputs.changes_since(&locked.inputs);
                if changes.is_empty() {
                    vec!["pixelgen's training changed".to_owned()]
                } else {
                    changes
                }
            }
            (Lookup::Missing, Some(_)) => vec![format!("trained file missing ({})", path())],
        };
        let used_by = self
            .manifest
            .sprites
            .iter()
            .filter(|sprite| {
                sprite
                    .loras
                    .iter()
                    .any(|l| l.source == LoraSource::Trained(spec.name.clone()))
            })
            .map(|sprite| sprite.name.clone())
            .collect();
        LoraStatus {
            name: spec.name.clone(),
            images: spec.images.clone(),
            status: if reasons.is_empty() {
                Freshness::Fresh
            } else {
                Freshness::Stale
            },
            reasons,
            used_by,
        }
    }

    /// For a sprite whose LoRA group changed: one reason per trained LoRA whose key
    /// differs from the lock's, saying what changed in its inputs.
    pub(super) fn trained_lora_changes(&self, planned: &PlannedSprite) -> Vec<String> {
        let mut reasons = Vec::new();
        for name in planned.loras.iter().filter_map(|l| l.trained.as_ref()) {
            let Some(lora) = self
                .manifest
                .trained_lora_index(name)
                .map(|index| &self.trained[index])
            else {
                continue;
            };
            let previous = self
                .lock
                .files
                .get(&InputFile::TrainedLora(name.clone()).lock_key());
            if previous.is_none_or(|key| *key == lora.key.to_hex()) {
                continue;
            }
            let changes = self
                .lock
                .trained_loras
                .get(name)
                .map(|locked| lora.inputs.changes_since(&locked.inputs))
                .unwrap_or_default();
            if changes.is_empty() {
                reasons.push(format!("trained LoRA `{name}` changed"));
            } else {
                reasons.push(format!(
                    "trained LoRA `{name}` changed ({})",
                    changes.join(", ")
                ));
            }
        }
        reasons
    }

    /// The trained LoRAs (indices into `trained`) that stale frames about to be drawn
    /// need: frames whose raw image is cached are finished without the model.
    pub(super) fn loras_to_train(&self, statuses: &[(SpriteStatus, Vec<Lookup>)]) -> Vec<usize> {
        let mut needed = std::collections::BTreeSet::new();
        for (planned, (status, lookups)) in self.plan.iter().zip(statuses) {
            if status.status == Freshness::Fresh
                || planned.loras.iter().all(|l| l.trained.is_none())
            {
                continue;
            }
            let draws = planned.frames.iter().zip(lookups).any(|(frame, lookup)| {
                !matches!(lookup, Lookup::Hit { .. })
                    && frame
                        .raw
                        .is_none_or(|raw| !self.cache.raw_path_of(&raw).is_file())
            });
            if !draws {
                continue;
            }
            needed.extend(
                planned
                    .loras
                    .iter()
                    .filter_map(|l| l.trained.as_ref())
                    .filter_map(|name| self.manifest.trained_lora_index(name)),
            );
        }
        needed.into_iter().collect()
    }

    /// Trains the LoRA `index` (into `trained`) into the cache.
    pub(super) fn train(&mut self, index: usize, progress: &mut dyn Progress) -> Result<(), Error> {
        let planned = &self.trained[index];
        let spec = &self.manifest.trained_loras[index];
        let failed = |message: String| {
            Error::Train(Box::new(
                crate::diagnostics::Diagnostic::new(
                    &self.manifest.source,
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
            crate::train::run(&job, &self.workshop.environment, &mut steps)
                .map_err(|e| failed(e.to_string()))?;
            self.timings.add(Stage::Train, start.elapsed());
            Ok(())
        }
        #[cfg(not(feature = "diffusion"))]
        {
            let _ = (progress, planned);
            Err(failed(
                "training needs pixelgen-build's `diffusion` feature (on by default); trained LoRAs already in cache/ still build offline".into(),
            ))
        }
    }
}
