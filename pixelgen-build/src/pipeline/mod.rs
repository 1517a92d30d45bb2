//! The stages wired together: manifest → plan → cache lookup → generate → pixelize →
//! store, and the lock file. Both the build script and `cargo pixelgen` drive this.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

#[cfg(test)]
use crate::cache::LOCK_NAME;
use crate::cache::{Cache, Lookup, SHARED_STAMPS_NAME};
use crate::environment::Environment;
use crate::error::Error;
use crate::generate::{
    self, Drawn, Frame, GenerateError, GroupInputs, GroupKey, ResolvedLora, Workshop,
};
use crate::identity::{FrameId, LoraName, SpriteName};
use crate::key::{FileHasher, InputFile, InputGroup};
use crate::lock::{LockFile, LockedLora, LockedSprite};
use crate::manifest::{self, LoraSource, Manifest};
use crate::pixelize;
use crate::plan::{self, Plan, PlannedLora, PlannedSprite};
use crate::status::{Freshness, LoraStatus, SpriteStatus, StaleReport};
use crate::timings::{Stage, Timings};
use pixelgen_diffusion::advisory::AdvisoryLock;

pub const MANIFEST_FILE: &str = "sprites.ron";
pub const LOCK_FILE: &str = "sprites.lock";
pub const CACHE_DIR: &str = "cache";
/// A build's training run keeps a checkpoint every this many steps (an interrupted build
/// resumes from it).
#[cfg(feature = "diffusion")]
const TRAINING_CHECKPOINT_EVERY: usize = 100;

/// Counts of one run, for the summary line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub sprites: usize,
    pub generated: usize,
    pub cached: usize,
    /// Stale sprites left as they were because they were not asked for
    /// ([`Session::realize_only`]).
    pub held_back: usize,
    /// Things the user should hear once (a backend running slower than it could, …).
    pub notes: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Outside checks read these exact words.
        write!(
            f,
            "pixelgen: {} sprites: {} generated, {} cached",
            self.sprites, self.generated, self.cached
        )
    }
}

/// Progress of generation, for progress bars.
pub trait Progress {
    fn start(&mut self, _frames_to_generate: usize) {}
    fn frame_done(&mut self, _frame: &FrameId) {}
    /// An image server finished a frame (called just before `frame_done` for it).
    fn server_frame_done(&mut self, _server: &str) {}
    /// A stale trained LoRA is being trained: `done` of `steps` steps, the last loss.
    fn training(&mut self, _lora: &LoraName, _done: usize, _steps: usize, _loss: f32) {}
}

/// No progress reporting (the build script's case: cargo shows its output only at the end).
pub struct Quiet;
impl Progress for Quiet {}

/// A manifest read and planned against its lock file and cache.
pub struct Session {
    pub project: Project,
    pub manifest: Manifest,
    pub lock: LockFile,
    pub plan: Vec<PlannedSprite>,
    /// The manifest's trained LoRAs, planned (in `Manifest::trained_loras` order).
    pub trained: Vec<PlannedLora>,
    /// Where this session's time went so far, by stage.
    pub timings: Timings,
    cache: Cache,
    hasher: FileHasher,
    /// What the backends share over the run: the environment (device, lock folder, hub
    /// cache, image servers; read by the caller), the image servers' connections and the
    /// warm server.
    workshop: Workshop,
    /// Model identities the image servers reported this run (online builds only).
    reported: BTreeMap<InputFile, blake3::Hash>,
}

impl Session {
    /// Reads the manifest and lock file and computes every key. `offline` lets LoRA
    /// files be absent (their hashes then come from the lock file). `environment` is the
    /// caller's (the builder and the CLI read it once; tests pass
    /// `Environment::default()`).
    pub fn open(
        project: Project,
        mut hasher: FileHasher,
        environment: &Environment,
        offline: bool,
    ) -> Result<Session, Error> {
        hasher.share_large_files(
            project.cache_dir.join(SHARED_STAMPS_NAME),
            crate::key::SHARED_STAMP_MIN_SIZE,
        );
        let mut timings = Timings::new();
        let (manifest, lock) = timings.time(Stage::Manifest, || {
            Ok::<_, Error>((
                manifest::load(&project.manifest_path)?,
                LockFile::load(&project.lock_path)?,
            ))
        })?;
        let hub_cache = environment.hub.cache_dir.as_deref();
        let cache = Cache::new(&project.cache_dir);
        let Plan {
            sprites: plan,
            loras: trained,
        } = plan_timed(
            &manifest,
            &mut hasher,
            &lock,
            offline,
            hub_cache,
            &cache,
            &mut timings,
        )?;
        let workshop = Workshop::new(project.manifest_dir(), environment);
        Ok(Session {
            cache,
            project,
            manifest,
            lock,
            plan,
            trained,
            timings,
            hasher,
            workshop,
            reported: BTreeMap::new(),
        })
    }

    /// Sends Diffusion frames to the warm server at this address when one answers there
    /// (else, or when it fails, they are drawn in-process). Keys and cache files are the
    /// same either way.
    #[cfg(unix)]
    pub fn with_server(mut self, server: Option<generate::diffusion::warm::WarmServer>) -> Session {
        self.workshop.warm_server = server;
        self
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Every sprite's freshness, with reasons, sorted by name.
    pub fn status(&mut self) -> Vec<SpriteStatus> {
        self.all_statuses().into_iter().map(|(s, _)| s).collect()
    }

    /// Every sprite's status and its frames' lookups (one cache check).
    fn all_statuses(&mut self) -> Vec<(SpriteStatus, Vec<Lookup>)> {
        let start = std::time::Instant::now();
        let statuses = (0..self.plan.len())
            .map(|i| self.sprite_status(i))
            .collect();
        // Cache files hashed on the way are part of the check, not of `Stage::Hash`.
        self.hasher.take_reading_time();
        self.timings.add(Stage::CacheCheck, start.elapsed());
        statuses
    }

    /// The status of one planned sprite, and its frames' lookups.
    fn sprite_status(&mut self, planned: usize) -> (SpriteStatus, Vec<Lookup>) {
        let planned = &self.plan[planned];
        let sprite = &self.manifest.sprites[planned.sprite];
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
                self.cache.lookup(
                    key,
                    expected,
                    (sprite.width, sprite.height),
                    &mut self.hasher,
                )
            })
            .collect();

        let mut reasons = Vec::new();
        if lookups.iter().any(|l| !matches!(l, Lookup::Hit { .. })) {
            reasons = self.why_stale(planned, &lookups);
        }
        let status = SpriteStatus {
            name: sprite.name.clone(),
            status: if reasons.is_empty() {
                Freshness::Fresh
            } else {
                Freshness::Stale
            },
            reasons,
            frames: planned.frames.len(),
        };
        (status, lookups)
    }

    fn why_stale(&self, planned: &PlannedSprite, lookups: &[Lookup]) -> Vec<String> {
        let sprite = &self.manifest.sprites[planned.sprite];
        let mut reasons = Vec::new();
        match self.lock.sprites.get(&sprite.name) {
            None => reasons.push("new sprite (not in sprites.lock)".to_string()),
            Some(locked) => {
                for (group, hash) in &planned.inputs {
                    if locked.inputs.get(group.name()) == Some(hash) {
                        continue;
                    }
                    if *group == InputGroup::Loras {
                        let trained = self.trained_lora_changes(planned);
                        if !trained.is_empty() {
                            reasons.extend(trained);
                            continue;
                        }
                        let changed_files: Vec<&String> = planned
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
                                    Some(path)
                                }
                                _ => None,
                            })
                            .collect();
                        if changed_files.is_empty() {
                            reasons.push("LoRAs changed (list or weights)".to_string());
                        } else {
                            for path in changed_files {
                                reasons.push(format!("LoRA file changed ({path})"));
                            }
                        }
                    } else if *group == InputGroup::Model {
                        reasons.push("model changed (its files differ from the ones the cache was made with)".to_string());
                    } else {
                        reasons.push(format!("{} changed", group.name().replace('_', " ")));
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

    /// Makes every frame available in the cache: generates what is stale (online) or
    /// fails with the list of stale sprites (offline). Then writes the lock file.
    /// Returns the counts for the summary line.
    pub fn realize(
        &mut self,
        offline: bool,
        progress: &mut dyn Progress,
    ) -> Result<Summary, Error> {
        self.realize_only(offline, None, progress)
    }

    /// [`realize`](Self::realize), for the sprites named in `only` (all when `None`): the
    /// other stale sprites are held back — not generated, and their lock entries stay as
    /// they were, so their status keeps its reasons. Names that are not sprites select
    /// nothing (callers check them against the manifest).
    pub fn realize_only(
        &mut self,
        offline: bool,
        only: Option<&std::collections::BTreeSet<SpriteName>>,
        progress: &mut dyn Progress,
    ) -> Result<Summary, Error> {
        let held: Vec<bool> = self
            .plan
            .iter()
            .map(|planned| {
                only.is_some_and(|names| {
                    !names.contains(&self.manifest.sprites[planned.sprite].name)
                })
            })
            .collect();
        let hold = |statuses: &mut Vec<(SpriteStatus, Vec<Lookup>)>| -> usize {
            let mut held_back = 0;
            for (entry, &held) in statuses.iter_mut().zip(&held) {
                if held && entry.0.status == Freshness::Stale {
                    entry.0.status = Freshness::Fresh;
                    held_back += 1;
                }
            }
            held_back
        };
        let mut notes = Vec::new();
        if !offline {
            // Online, the image servers say which model their Server sprites' keys cover.
            notes.extend(self.ask_servers_for_models(&held)?);
        }
        let mut statuses = self.all_statuses();
        let mut held_back = hold(&mut statuses);
        let stale_count = statuses
            .iter()
            .filter(|(s, _)| s.status == Freshness::Stale)
            .count();
        if stale_count > 0 && offline {
            let loras = self
                .loras_to_train(&statuses)
                .into_iter()
                .map(|index| self.lora_status(index))
                .filter(|status| status.status == Freshness::Stale)
                .collect();
            return Err(Error::Stale(StaleReport {
                manifest_path: self.project.manifest_path.clone(),
                stale: statuses
                    .into_iter()
                    .map(|(s, _)| s)
                    .filter(|s| s.status == Freshness::Stale)
                    .collect(),
                loras,
            }));
        }
        let mut generated = 0;
        if stale_count > 0 {
            // One generating process at a time per cache: parallel build scripts would
            // otherwise load models (and draw the same sprites) at once.
            let _guard = CacheLock::acquire(&self.cache)?;
            // Holding the lock, no other pixelgen writes here but through files named after
            // live processes: what killed ones left can go.
            let litter = crate::atomic::remove_litter(self.cache.dir());
            if !litter.is_empty() {
                let bytes: u64 = litter.iter().map(|(_, size)| size).sum();
                notes.push(format!(
                    "removed {} temporary file(s) ({bytes} bytes) that an interrupted run left in {}",
                    litter.len(),
                    self.cache.dir().display()
                ));
            }
            // Another process may have generated some while we waited.
            for (i, entry) in statuses.iter_mut().enumerate() {
                if entry.0.status == Freshness::Stale {
                    *entry = self.sprite_status(i);
                }
            }
            // Models named by Hugging Face id are downloaded now, when something needs
            // them; their files are part of the keys, so the plan is made again.
            let manifest_dir = self.project.manifest_dir().to_path_buf();
            let mut models: std::collections::BTreeSet<&str> = statuses
                .iter()
                .zip(&self.plan)
                .filter(|((s, _), _)| s.status == Freshness::Stale)
                .filter_map(|(_, planned)| {
                    self.manifest.sprites[planned.sprite]
                        .generator
                        .backend()
                        .local_model()
                })
                .collect();
            models.extend(
                self.loras_to_train(&statuses)
                    .into_iter()
                    .map(|index| self.manifest.trained_loras[index].model.as_str()),
            );
            let mut downloaded = false;
            for model in models {
                downloaded |= generate::diffusion::prefetch_model(
                    model,
                    &manifest_dir,
                    &self.workshop.environment.hub,
                )?;
            }
            if downloaded {
                let replanned = plan_timed(
                    &self.manifest,
                    &mut self.hasher,
                    &ReportedOverLock {
                        reported: &self.reported,
                        lock: &self.lock,
                    },
                    offline,
                    self.workshop.environment.hub.cache_dir.as_deref(),
                    &self.cache,
                    &mut self.timings,
                )?;
                self.plan = replanned.sprites;
                self.trained = replanned.loras;
                statuses = self.all_statuses();
                held_back = hold(&mut statuses);
            }
            generated = statuses
                .iter()
                .filter(|(s, _)| s.status == Freshness::Stale)
                .count();
            // Trained LoRAs the stale frames need are trained first (each once).
            for index in self.loras_to_train(&statuses) {
                if self.lora_status(index).status == Freshness::Stale {
                    self.train(index, progress)?;
                }
            }
            notes.extend(self.generate_stale(&mut statuses, progress)?);
        }

        let mut lock = LockFile::empty();
        for ((planned, (_, lookups)), &held) in self.plan.iter().zip(&statuses).zip(&held) {
            let sprite = &self.manifest.sprites[planned.sprite];
            if held && lookups.iter().any(|l| !matches!(l, Lookup::Hit { .. })) {
                // Held back while stale: the lock keeps what it said (nothing when new).
                if let Some(entry) = self.lock.sprites.get(&sprite.name) {
                    lock.sprites.insert(sprite.name.clone(), entry.clone());
                }
                continue;
            }
            lock.files.extend(
                planned
                    .files
                    .iter()
                    .map(|(file, hash)| (file.lock_key(), hash.clone())),
            );
            let outputs = lookups
                .iter()
                .map(|l| match l {
                    Lookup::Hit { output } => output.to_hex().to_string(),
                    _ => String::new(),
                })
                .collect();
            lock.sprites.insert(
                sprite.name.clone(),
                LockedSprite {
                    inputs: LockedSprite::inputs_of(&planned.inputs),
                    keys: planned.frames.iter().map(|f| f.key.to_hex()).collect(),
                    outputs,
                },
            );
        }
        for index in 0..self.trained.len() {
            let lookup = self.lora_lookup(index);
            let (planned, name) = (
                &self.trained[index],
                &self.manifest.trained_loras[index].name,
            );
            match lookup {
                Lookup::Hit { output } => {
                    lock.files.extend(
                        planned
                            .files
                            .iter()
                            .map(|(file, hash)| (file.lock_key(), hash.clone())),
                    );
                    lock.trained_loras.insert(
                        name.clone(),
                        LockedLora {
                            key: planned.key.to_hex(),
                            inputs: planned.inputs.clone(),
                            output: output.to_hex().to_string(),
                        },
                    );
                }
                // Not trained (no stale sprite needed it): the lock keeps what it said, so
                // its sprites can still say what changed.
                _ => {
                    if let Some(old) = self.lock.trained_loras.get(name) {
                        lock.trained_loras.insert(name.clone(), old.clone());
                    }
                }
            }
        }
        // Compared as data first: rendering and re-reading the file costs more.
        if !offline && (lock != self.lock || !self.project.lock_path.is_file()) {
            lock.save(&self.project.lock_path)?;
        }
        self.lock = lock;
        // The shared stamps live in the cache folder: make sure its .gitignore covers them.
        if self.hasher.has_unsaved_shared_stamps() && self.cache.dir().is_dir() {
            let _ = self.cache.prepare();
        }
        self.hasher.save();
        Ok(Summary {
            sprites: self.plan.len(),
            generated,
            cached: self.plan.len() - generated - held_back,
            held_back,
            notes,
        })
    }

    /// Asks the backends of the sprites not held back for what only the outside world
    /// can tell (an InvokeAI server's model identity) and plans again with it. A model no
    /// server answered for keeps the identity the lock recorded (with a note): its
    /// sprites stay fresh if they were.
    fn ask_servers_for_models(&mut self, held: &[bool]) -> Result<Vec<String>, Error> {
        let mut notes = Vec::new();
        for (planned, &held) in self.plan.iter().zip(held) {
            if held {
                continue;
            }
            let sprite = &self.manifest.sprites[planned.sprite];
            let reported = sprite
                .generator
                .backend()
                .report_identities(&mut self.workshop)
                .map_err(|message| GenerateError::Failed {
                    sprite: sprite.name.clone(),
                    message,
                })?;
            self.reported.extend(reported.identities);
            for note in reported.notes {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        // Planned again only when a server reports another identity than the plan used
        // (the lock's): the usual case, nothing changed, costs no second plan.
        let changed = self.plan.iter().any(|planned| {
            planned.files.iter().any(|(file, hex)| {
                self.reported
                    .get(file)
                    .is_some_and(|reported| reported.to_hex().as_str() != hex)
            })
        });
        if changed {
            let replanned = plan_timed(
                &self.manifest,
                &mut self.hasher,
                &ReportedOverLock {
                    reported: &self.reported,
                    lock: &self.lock,
                },
                false,
                self.workshop.environment.hub.cache_dir.as_deref(),
                &self.cache,
                &mut self.timings,
            )?;
            self.plan = replanned.sprites;
            self.trained = replanned.loras;
        }
        Ok(notes)
    }

    /// Sprites in the order of `plan`, each with its frames' keys (for the atlas stage).
    pub fn sprites_with_keys(
        &self,
    ) -> impl Iterator<Item = (&manifest::SpriteSpec, &PlannedSprite)> {
        self.plan
            .iter()
            .map(|p| (&self.manifest.sprites[p.sprite], p))
    }
}

/// `plan::plan`, with the time spent reading files to hash them counted apart.
fn plan_timed(
    manifest: &Manifest,
    hasher: &mut FileHasher,
    known: &dyn crate::key::KnownFileHashes,
    offline: bool,
    hub_cache: Option<&Path>,
    cache: &Cache,
    timings: &mut Timings,
) -> Result<Plan, Error> {
    hasher.take_reading_time();
    let start = std::time::Instant::now();
    let plan = plan::plan(manifest, hasher, known, offline, hub_cache, cache)?;
    let hashing = hasher.take_reading_time();
    timings.add(Stage::Hash, hashing);
    timings.add(Stage::Plan, start.elapsed().saturating_sub(hashing));
    Ok(plan)
}

/// What the image servers reported this run (model identities), over what the lock
/// file recorded.
struct ReportedOverLock<'a> {
    reported: &'a BTreeMap<InputFile, blake3::Hash>,
    lock: &'a LockFile,
}

impl crate::key::KnownFileHashes for ReportedOverLock<'_> {
    fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash> {
        self.reported
            .get(file)
            .copied()
            .or_else(|| self.lock.known_hash(file))
    }
}

/// An exclusive advisory lock, held while generating into one cache folder.
struct CacheLock {
    _lock: AdvisoryLock,
}

impl CacheLock {
    fn acquire(cache: &Cache) -> Result<CacheLock, Error> {
        let path = cache.prepare().map_err(|source| Error::Cache {
            path: cache.dir().to_path_buf(),
            source,
        })?;
        let lock = AdvisoryLock::acquire(&path).map_err(|source| Error::Cache { path, source })?;
        Ok(CacheLock { _lock: lock })
    }
}

mod draw;
mod loras;
mod project;
#[cfg(test)]
mod tests;

pub use project::{Project, workspace_of, workspace_root_of};
