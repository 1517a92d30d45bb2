//! The stages wired together: manifest → plan → cache lookup → generate → pixelize →
//! store, and the lock file. Both the build script and `cargo pixelgen` drive this.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::key::{FileHasher, InputFile};
use crate::lock::{LockFile, LockedLora, LockedSprite};
use crate::manifest;
use crate::pixelize;
use crate::plan::{self, Changed, Plan, PlanInputs, PlannedSprite};
use crate::status::{Freshness, LoraStatus, SpriteStatus, StaleReport};
use crate::timings::{Stage, Timings};
use check::Checker;
use draw::{Drawing, Work};
use loras::{Trainer, loras_to_train};
use pixelgen_diffusion::advisory::AdvisoryLock;

pub const MANIFEST_FILE: &str = "sprites.ron";
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

/// A manifest read and planned against its lock file and cache; a short driver over the
/// stages: plan ([`Plan`], made once) → status ([`check::Entry`] per sprite) → work
/// ([`draw::Work`], stale frames grouped by backend) → drawn (entries' lookups become hits)
/// → lock record ([`record::record`]).
pub struct Session {
    pub project: Project,
    /// The lock file as the run found it (after `realize`, as it wrote it).
    pub lock: LockFile,
    /// Every sprite's and trained LoRA's spec and keys.
    pub plan: Plan,
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
        let cache = Cache::new(&project.cache_dir);
        let plan = timed(&mut hasher, &mut timings, |hasher| {
            plan::plan(
                manifest,
                PlanInputs {
                    hasher,
                    known: &lock,
                    allow_missing_files: offline,
                    hub_cache: environment.hub.cache_dir.as_deref(),
                    cache: &cache,
                },
            )
        })?;
        let workshop = Workshop::new(project.manifest_dir(), environment);
        Ok(Session {
            cache,
            project,
            lock,
            plan,
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

    /// The status stage over the whole plan.
    fn check(&mut self) -> Vec<check::Entry<'_>> {
        Checker {
            cache: &self.cache,
            hasher: &mut self.hasher,
            lock: &self.lock,
        }
        .check(&self.plan, &mut self.timings)
    }

    /// Every sprite's freshness, with reasons, sorted by name.
    pub fn status(&mut self) -> Vec<SpriteStatus> {
        self.check().into_iter().map(|entry| entry.status).collect()
    }

    /// Every trained LoRA's state, sorted by name.
    pub fn lora_statuses(&mut self) -> Vec<LoraStatus> {
        let mut checker = Checker {
            cache: &self.cache,
            hasher: &mut self.hasher,
            lock: &self.lock,
        };
        self.plan
            .loras
            .iter()
            .map(|lora| checker.lora_status(&self.plan, lora))
            .collect()
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
        only: Option<&BTreeSet<SpriteName>>,
        progress: &mut dyn Progress,
    ) -> Result<Summary, Error> {
        let held = |name: &SpriteName| only.is_some_and(|names| !names.contains(name));
        let mut notes = Vec::new();
        if !offline {
            // Online, the image servers say which model their Server sprites' keys cover.
            notes.extend(self.ask_servers_for_models(&held)?);
        }
        let mut checker = Checker {
            cache: &self.cache,
            hasher: &mut self.hasher,
            lock: &self.lock,
        };
        let mut entries = checker.check(&self.plan, &mut self.timings);
        let mut held_back = hold(&mut entries, &held);
        let stale = entries.iter().filter(|entry| entry.to_draw()).count();
        if stale > 0 && offline {
            let report = stale_report(&self.plan, entries, &mut checker, &self.project);
            return Err(Error::Stale(report));
        }
        // One generating process at a time per cache: parallel build scripts would
        // otherwise load models (and draw the same sprites) at once.
        let _guard = match stale {
            0 => None,
            _ => Some(lock_cache(&self.cache, &mut notes)?),
        };
        if stale > 0 {
            // Models named by Hugging Face id are downloaded now, when something needs
            // them; the entries on them are keyed again.
            let models = models_to_draw_with(&self.plan, &entries, &self.cache);
            let downloaded = download(models, &self.project, &self.workshop.environment)?;
            if downloaded.is_empty() {
                // Another process may have generated some while this one waited.
                for entry in entries.iter_mut().filter(|entry| entry.to_draw()) {
                    *entry = checker.check_sprite(&self.plan, entry.planned);
                }
            } else {
                drop(entries);
                let changed = Changed {
                    models: downloaded,
                    ..Changed::default()
                };
                self.rekey(&changed, offline)?;
                checker = Checker {
                    cache: &self.cache,
                    hasher: &mut self.hasher,
                    lock: &self.lock,
                };
                entries = checker.check(&self.plan, &mut self.timings);
            }
            held_back = hold(&mut entries, &held);
        }
        let generated = entries.iter().filter(|entry| entry.to_draw()).count();
        if generated > 0 {
            let trainer = Trainer {
                plan: &self.plan,
                project: &self.project,
                cache: &self.cache,
            };
            let workshop = &mut self.workshop;
            let timings = &mut self.timings;
            let drawn = draw(
                &trainer,
                workshop,
                &mut entries,
                &mut checker,
                progress,
                timings,
            );
            notes.extend(drawn?);
        }
        let loras: Vec<Lookup> = self
            .plan
            .loras
            .iter()
            .map(|lora| checker.lora_lookup(lora))
            .collect();
        let lock = record::record(&self.plan, &entries, &loras, &self.lock);
        // Compared as data first: rendering and re-reading the file costs more.
        if !offline && (lock != self.lock || !self.project.lock_path.is_file()) {
            lock.save(&self.project.lock_path)?;
        }
        let sprites = entries.len();
        drop(entries);
        self.lock = lock;
        // The shared stamps live in the cache folder: make sure its .gitignore covers them.
        if self.hasher.has_unsaved_shared_stamps() && self.cache.dir().is_dir() {
            let _ = self.cache.prepare();
        }
        self.hasher.save();
        Ok(Summary {
            sprites,
            generated,
            cached: sprites - generated - held_back,
            held_back,
            notes,
        })
    }

    /// Keys again the entries `changed` concerns, with what the servers reported over
    /// what the lock recorded.
    fn rekey(&mut self, changed: &Changed, offline: bool) -> Result<(), Error> {
        let known = ReportedOverLock {
            reported: &self.reported,
            lock: &self.lock,
        };
        let hub_cache = self.workshop.environment.hub.cache_dir.clone();
        let (plan, cache) = (&mut self.plan, &self.cache);
        timed(&mut self.hasher, &mut self.timings, |hasher| {
            plan.rekey(
                PlanInputs {
                    hasher,
                    known: &known,
                    allow_missing_files: offline,
                    hub_cache: hub_cache.as_deref(),
                    cache,
                },
                changed,
            )
        })?;
        Ok(())
    }
}

/// What an offline build fails with: the stale sprites not held back, and the trained
/// LoRAs they need that the cache lacks.
fn stale_report(
    plan: &Plan,
    entries: Vec<check::Entry<'_>>,
    checker: &mut Checker<'_>,
    project: &Project,
) -> StaleReport {
    let loras = loras_to_train(plan, &entries, checker.cache)
        .into_iter()
        .map(|lora| checker.lora_status(plan, lora))
        .filter(|status| status.status == Freshness::Stale)
        .collect();
    StaleReport {
        manifest_path: project.manifest_path.clone(),
        stale: entries
            .into_iter()
            .filter(|entry| entry.to_draw())
            .map(|entry| entry.status)
            .collect(),
        loras,
    }
}

/// Takes `cache`'s generating lock. Holding it, no other pixelgen writes there but
/// through files named after live processes: what killed ones left can go.
fn lock_cache(cache: &Cache, notes: &mut Vec<String>) -> Result<CacheLock, Error> {
    let guard = CacheLock::acquire(cache)?;
    let litter = crate::atomic::remove_litter(cache.dir());
    if !litter.is_empty() {
        let bytes: u64 = litter.iter().map(|(_, size)| size).sum();
        notes.push(format!(
            "removed {} temporary file(s) ({bytes} bytes) that an interrupted run left in {}",
            litter.len(),
            cache.dir().display()
        ));
    }
    Ok(guard)
}

/// Downloads the `models` named by Hugging Face id that are not on this machine. Returns
/// the ones it downloaded.
fn download(
    models: BTreeSet<String>,
    project: &Project,
    environment: &Environment,
) -> Result<BTreeSet<String>, Error> {
    let mut downloaded = BTreeSet::new();
    for model in models {
        let hub = &environment.hub;
        if generate::diffusion::prefetch_model(&model, project.manifest_dir(), hub)? {
            downloaded.insert(model);
        }
    }
    Ok(downloaded)
}

/// The drawing stage: trains the trained LoRAs the stale frames need (each once), then
/// draws the work the entries make, one drawer per group. Returns the backends' notes.
fn draw(
    trainer: &Trainer<'_>,
    workshop: &mut Workshop,
    entries: &mut [check::Entry<'_>],
    checker: &mut Checker<'_>,
    progress: &mut dyn Progress,
    timings: &mut Timings,
) -> Result<Vec<String>, Error> {
    let plan = trainer.plan;
    for lora in loras_to_train(plan, entries, trainer.cache) {
        if checker.lora_status(plan, lora).status == Freshness::Stale {
            trainer.train(lora, &workshop.environment, progress, timings)?;
        }
    }
    let trained = draw::trained_hashes(
        plan,
        entries
            .iter()
            .filter(|entry| entry.to_draw())
            .flat_map(|entry| &entry.planned.loras),
        checker,
    );
    let work = Work::of(entries);
    let mut drawing = Drawing::new(trainer.cache, workshop, &trained, progress);
    let drawn = drawing.draw(&work, entries);
    timings.merge(&drawing.timings);
    drawn
}

/// Marks the entries not asked for as held. Returns how many of them were stale.
fn hold(entries: &mut [check::Entry<'_>], held: &dyn Fn(&SpriteName) -> bool) -> usize {
    let mut stale = 0;
    for entry in entries.iter_mut() {
        if held(&entry.planned.spec.name) && entry.hold() {
            stale += 1;
        }
    }
    stale
}

/// The local models (as the manifest names them) that the entries to draw and the
/// trained LoRAs they need are drawn or trained with.
fn models_to_draw_with(
    plan: &Plan,
    entries: &[check::Entry<'_>],
    cache: &Cache,
) -> BTreeSet<String> {
    let mut models: BTreeSet<String> = entries
        .iter()
        .filter(|entry| entry.to_draw())
        .filter_map(|entry| entry.planned.spec.generator.backend().local_model())
        .map(str::to_owned)
        .collect();
    models.extend(
        loras_to_train(plan, entries, cache)
            .into_iter()
            .map(|lora| lora.spec.model.clone()),
    );
    models
}

/// A planning step, with the time spent reading files to hash them counted apart.
fn timed<T>(
    hasher: &mut FileHasher,
    timings: &mut Timings,
    step: impl FnOnce(&mut FileHasher) -> Result<T, plan::PlanError>,
) -> Result<T, Error> {
    hasher.take_reading_time();
    let start = std::time::Instant::now();
    let planned = step(hasher)?;
    let hashing = hasher.take_reading_time();
    timings.add(Stage::Hash, hashing);
    timings.add(Stage::Plan, start.elapsed().saturating_sub(hashing));
    Ok(planned)
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

mod check;
mod draw;
mod inputs;
mod loras;
mod project;
mod record;
#[cfg(test)]
mod tests;

pub use project::{Project, workspace_of, workspace_root_of};
