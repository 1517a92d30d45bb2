//! The status stage: each planned sprite checked against the cache and the lock file,
//! giving one [`Entry`] per sprite — its plan (which carries its spec), its freshness with
//! the reasons, and what the cache holds for each of its frames.
//!
//! Invariant: an entry's `lookups` has one lookup per planned frame, in frame order, and
//! its status is stale exactly when some lookup is not a hit (or, after
//! [`Entry::hold`], never).

use crate::cache::{Cache, Lookup};
use crate::key::{FileHasher, InputFile, InputGroup};
use crate::lock::LockFile;
use crate::plan::{Plan, PlannedLora, PlannedSprite};
use crate::status::{Freshness, LoraStatus, SpriteStatus};
use crate::timings::{Stage, Timings};

/// One sprite through a run.
pub(super) struct Entry<'p> {
    pub planned: &'p PlannedSprite,
    pub status: SpriteStatus,
    /// One per frame, in frame order; a frame stored this run becomes a hit.
    pub lookups: Vec<Lookup>,
    /// Not asked for this run ([`super::Session::realize_only`]): left as it is, stale or
    /// not.
    pub held: bool,
}

impl Entry<'_> {
    /// Stale and asked for: its missing frames are drawn this run.
    pub fn to_draw(&self) -> bool {
        !self.held && self.status.status == Freshness::Stale
    }

    /// Every frame is in the cache.
    pub fn complete(&self) -> bool {
        self.lookups
            .iter()
            .all(|lookup| matches!(lookup, Lookup::Hit { .. }))
    }

    /// Leaves the sprite as it is this run. Returns whether it was stale (and so is held
    /// back).
    pub fn hold(&mut self) -> bool {
        self.held = true;
        self.status.status == Freshness::Stale
    }
}

/// What checking reads: the cache, the hasher that verifies its files, and the lock file
/// as the run found it.
pub(super) struct Checker<'a> {
    pub cache: &'a Cache,
    pub hasher: &'a mut FileHasher,
    pub lock: &'a LockFile,
}

impl Checker<'_> {
    /// Every planned sprite checked, in plan order.
    pub fn check<'p>(&mut self, plan: &'p Plan, timings: &mut Timings) -> Vec<Entry<'p>> {
        let start = std::time::Instant::now();
        let entries = plan
            .sprites
            .iter()
            .map(|planned| self.check_sprite(plan, planned))
            .collect();
        // Cache files hashed on the way are part of the check, not of `Stage::Hash`.
        self.hasher.take_reading_time();
        timings.add(Stage::CacheCheck, start.elapsed());
        entries
    }

    /// One planned sprite checked: its frames' lookups, and its status.
    pub fn check_sprite<'p>(&mut self, plan: &Plan, planned: &'p PlannedSprite) -> Entry<'p> {
        let sprite = &planned.spec;
        let locked = self.lock.sprites.get(&sprite.name);
        let lookups: Vec<Lookup> = planned
            .frames
            .iter()
            .enumerate()
            .map(|(frame, planned_frame)| {
                let key = &planned_frame.key;
                let expected = locked
                    .filter(|l| l.keys.get(frame).is_some_and(|k| *k == key.to_hex()))
                    .and_then(|l| l.outputs.get(frame))
                    .map(String::as_str);
                self.cache
                    .lookup(key, expected, (sprite.width, sprite.height), self.hasher)
            })
            .collect();
        let mut reasons = Vec::new();
        if lookups.iter().any(|l| !matches!(l, Lookup::Hit { .. })) {
            reasons = self.why_stale(plan, planned, &lookups);
        }
        Entry {
            planned,
            status: SpriteStatus {
                name: sprite.name.clone(),
                status: Freshness::of(&reasons),
                reasons,
                frames: planned.frames.len(),
            },
            lookups,
            held: false,
        }
    }

    fn why_stale(&self, plan: &Plan, planned: &PlannedSprite, lookups: &[Lookup]) -> Vec<String> {
        let mut reasons = Vec::new();
        match self.lock.sprites.get(&planned.spec.name) {
            None => reasons.push("new sprite (not in sprites.lock)".to_string()),
            Some(locked) => {
                for (group, hash) in &planned.inputs {
                    if locked.inputs.get(group.name()) == Some(hash) {
                        continue;
                    }
                    match group {
                        InputGroup::Loras => reasons.extend(self.lora_changes(plan, planned)),
                        InputGroup::Model => reasons.push("model changed (its files differ from the ones the cache was made with)".to_string()),
                        _ => reasons.push(format!("{} changed", group.name().replace('_', " "))),
                    }
                }
            }
        }
        for (frame, lookup) in lookups.iter().enumerate() {
            let key = &planned.frames[frame].key;
            match lookup {
                Lookup::Hit { .. } => {}
                Lookup::Missing if reasons.is_empty() => reasons.push(format!(
                    "cache file missing ({})",
                    self.cache.path_of(key).display()
                )),
                Lookup::Missing => {}
                Lookup::Corrupt { reason } => reasons.push(format!(
                    "cache file corrupt ({}: {reason})",
                    self.cache.path_of(key).display()
                )),
            }
        }
        if reasons.is_empty() {
            reasons.push("cache entry missing".to_string());
        }
        reasons.dedup();
        reasons
    }

    /// Why a sprite's LoRA group changed: the trained LoRAs whose inputs changed, else
    /// the LoRA files whose bytes changed, else the list or the weights.
    fn lora_changes(&self, plan: &Plan, planned: &PlannedSprite) -> Vec<String> {
        let trained = self.trained_lora_changes(plan, planned);
        if !trained.is_empty() {
            return trained;
        }
        let changed_files: Vec<String> = planned
            .files
            .iter()
            .filter_map(|(file, hash)| match file {
                InputFile::Lora(path)
                    if self
                        .lock
                        .files
                        .get(&file.lock_key())
                        .is_some_and(|old| old != hash) =>
                {
                    Some(format!("LoRA file changed ({path})"))
                }
                _ => None,
            })
            .collect();
        if changed_files.is_empty() {
            vec!["LoRAs changed (list or weights)".to_string()]
        } else {
            changed_files
        }
    }

    /// One reason per trained LoRA of the sprite whose key differs from the lock's,
    /// saying what changed in its inputs.
    fn trained_lora_changes(&self, plan: &Plan, planned: &PlannedSprite) -> Vec<String> {
        let mut reasons = Vec::new();
        for name in planned.loras.iter().filter_map(|l| l.trained.as_ref()) {
            let Some(lora) = plan.lora(name) else {
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

    /// The cache's trained file for `lora`, checked against the hash the lock recorded
    /// for the same key.
    pub fn lora_lookup(&mut self, lora: &PlannedLora) -> Lookup {
        let key = lora.key.to_hex();
        let expected = self
            .lock
            .trained_loras
            .get(&lora.spec.name)
            .filter(|l| l.key == key && !l.output.is_empty())
            .map(|l| l.output.as_str());
        self.cache.lookup_lora(&lora.key, expected, self.hasher)
    }

    /// Whether `lora` is in the cache, and if not, why.
    pub fn lora_status(&mut self, plan: &Plan, lora: &PlannedLora) -> LoraStatus {
        let lookup = self.lora_lookup(lora);
        let spec = &lora.spec;
        let key = lora.key.to_hex();
        let locked = self.lock.trained_loras.get(&spec.name);
        let path = || lora.file.display().to_string();
        let reasons = match (&lookup, locked) {
            (Lookup::Hit { .. }, _) => Vec::new(),
            (Lookup::Corrupt { reason }, _) => {
                vec![format!("trained file corrupt ({}: {reason})", path())]
            }
            (Lookup::Missing, None) => vec!["new trained LoRA (not in sprites.lock)".to_owned()],
            (Lookup::Missing, Some(locked)) if locked.key != key => {
                let changes = lora.inputs.changes_since(&locked.inputs);
                if changes.is_empty() {
                    vec!["pixelgen's training changed".to_owned()]
                } else {
                    changes
                }
            }
            (Lookup::Missing, Some(_)) => vec![format!("trained file missing ({})", path())],
        };
        LoraStatus {
            name: spec.name.clone(),
            images: spec.images.clone(),
            status: Freshness::of(&reasons),
            reasons,
            used_by: plan.users_of(&spec.name),
        }
    }
}
