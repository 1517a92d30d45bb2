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

/// Where one game crate's manifest, lock file and cache are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub manifest_path: PathBuf,
    pub lock_path: PathBuf,
    pub cache_dir: PathBuf,
}

impl Project {
    /// The folder of `sprites.ron`, which relative model and LoRA paths start from.
    pub fn manifest_dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }

    /// Where this crate's atlases are published for a running game to reload them:
    /// `cache/live/<crate folder>-<hash of its path>/`, with the same layout as OUT_DIR's
    /// (`pixelgen/index.json` and the pages). The build and `cargo pixelgen watch` both
    /// write there; git ignores it.
    pub fn live_dir(&self) -> PathBuf {
        let crate_dir = self.manifest_dir();
        let canonical =
            std::fs::canonicalize(crate_dir).unwrap_or_else(|_| crate_dir.to_path_buf());
        let hash = blake3::hash(canonical.to_string_lossy().as_bytes());
        let name: String = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.cache_dir
            .join(crate::cache::LIVE_DIR)
            .join(format!("{name}-{}", &hash.to_hex()[..12]))
    }

    /// The project of the crate in `crate_dir`: `sprites.ron` and `sprites.lock` beside
    /// its Cargo.toml, and the cache in `cache/` at the root of its cargo workspace
    /// (`workspace_root`; `None` asks cargo).
    pub fn for_crate(
        crate_dir: &Path,
        cache_dir: Option<PathBuf>,
        workspace_root: Option<PathBuf>,
    ) -> Result<Project, Error> {
        let manifest_path = crate_dir.join(MANIFEST_FILE);
        let cache_dir = match cache_dir {
            Some(dir) => dir,
            None => match workspace_root {
                Some(root) => root.join(CACHE_DIR),
                None => workspace_root_of(crate_dir)?.join(CACHE_DIR),
            },
        };
        Ok(Project {
            lock_path: manifest_path.with_extension("lock"),
            manifest_path,
            cache_dir,
        })
    }
}

impl Project {
    /// The project of the crate in `crate_dir`, as the build script and `cargo pixelgen`
    /// both find it: the cache folder is `cache_dir` if given, else `PIXELGEN_CACHE_DIR`
    /// (relative to the crate), else `cache/` at the cargo workspace root. With `memo`,
    /// the workspace root is remembered in that folder (a build's OUT_DIR), since
    /// `cargo metadata` costs tens of milliseconds.
    pub fn discover(
        crate_dir: &Path,
        cache_dir: Option<PathBuf>,
        environment: &Environment,
        memo: Option<&Path>,
    ) -> Result<Project, Error> {
        let cache_dir = cache_dir.or_else(|| environment.cache_dir_for(crate_dir));
        let workspace_root = match (&cache_dir, memo) {
            (Some(_), _) => None,
            (None, Some(memo)) => Some(memoised_workspace_root(crate_dir, memo)?),
            (None, None) => Some(workspace_root_of(crate_dir)?),
        };
        Project::for_crate(crate_dir, cache_dir, workspace_root)
    }
}

/// `cargo metadata` costs tens of milliseconds; remember its answer in OUT_DIR.
fn memoised_workspace_root(crate_dir: &Path, state_dir: &Path) -> Result<PathBuf, Error> {
    let memo = state_dir.join("workspace-root");
    if let Ok(text) = std::fs::read_to_string(&memo)
        && let Some((for_crate, root)) = text.split_once('\n')
        && Path::new(for_crate) == crate_dir
        && Path::new(root).join("Cargo.toml").is_file()
    {
        return Ok(PathBuf::from(root));
    }
    let root = workspace_root_of(crate_dir)?;
    let _ = std::fs::create_dir_all(state_dir);
    let _ = crate::cache::write_atomically(
        &memo,
        format!("{}\n{}", crate_dir.display(), root.display()).as_bytes(),
    );
    Ok(root)
}

/// The cargo workspace root of the crate in `crate_dir`, from `cargo metadata`.
pub fn workspace_root_of(crate_dir: &Path) -> Result<PathBuf, Error> {
    Ok(workspace_of(crate_dir)?.workspace_root.into_std_path_buf())
}

/// `cargo metadata` (offline, without dependencies) for the workspace of the crate in
/// `crate_dir`.
pub fn workspace_of(crate_dir: &Path) -> Result<cargo_metadata::Metadata, Error> {
    cargo_metadata::MetadataCommand::new()
        .manifest_path(crate_dir.join("Cargo.toml"))
        .no_deps()
        .other_options(vec!["--offline".to_string()])
        .exec()
        .map_err(|e| {
            Error::Environment(format!(
                "cannot find the cargo workspace of {}: {e}\nhelp: set PIXELGEN_CACHE_DIR to the folder that holds the sprite cache",
                crate_dir.display()
            ))
        })
}

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

    /// Generates every stale frame, one drawer per group of sprites that share a
    /// backend, its settings and LoRAs ([`GroupKey`]). Returns the backends' notes.
    fn generate_stale(
        &mut self,
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        progress: &mut dyn Progress,
    ) -> Result<Vec<String>, Error> {
        let mut groups: BTreeMap<GroupKey, Vec<(usize, u32)>> = BTreeMap::new();
        for (i, (status, lookups)) in statuses.iter().enumerate() {
            if status.status == Freshness::Fresh {
                continue;
            }
            let planned = &self.plan[i];
            let backend = self.manifest.sprites[planned.sprite].generator.backend();
            for (frame, lookup) in lookups.iter().enumerate() {
                if !matches!(lookup, Lookup::Hit { .. }) {
                    groups
                        .entry(backend.group(&planned.loras))
                        .or_default()
                        .push((i, frame as u32));
                }
            }
        }
        progress.start(groups.values().map(Vec::len).sum());
        let mut notes = Vec::new();
        let mut timings = Timings::new();
        // Frames each image server drew, for one note at the end.
        let mut drawn_by: BTreeMap<String, usize> = BTreeMap::new();
        for jobs in groups.values() {
            // Frames whose raw image is cached (only the palette, size or background
            // changed) are finished from it without the generator.
            let mut to_draw = Vec::with_capacity(jobs.len());
            for &(i, frame) in jobs {
                let raw_key = self.plan[i].frames[frame as usize].raw;
                match raw_key.and_then(|key| self.cache.read_raw(&key)) {
                    Some(raw) => {
                        self.store_finished(statuses, i, frame, raw, progress, &mut timings)?
                    }
                    None => to_draw.push((i, frame)),
                }
            }
            if to_draw.is_empty() {
                continue;
            }
            let drawn =
                self.draw_group(&to_draw, statuses, progress, &mut timings, &mut drawn_by)?;
            for note in drawn {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        self.timings.merge(&timings);
        if !drawn_by.is_empty() {
            notes.push(format!(
                "image servers: {}",
                drawn_by
                    .iter()
                    .map(|(server, count)| format!("{server} drew {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(notes)
    }

    /// Planned sprite `i`'s LoRAs, with each trained one's content hash (its file in the
    /// cache, trained by now).
    fn group_loras(&mut self, i: usize) -> Vec<ResolvedLora> {
        let mut loras = self.plan[i].loras.clone();
        for lora in &mut loras {
            let Some(index) = lora
                .trained
                .as_ref()
                .and_then(|name| self.manifest.trained_lora_index(name))
            else {
                continue;
            };
            if let Lookup::Hit { output } = self.lora_lookup(index) {
                lora.content_hash = Some(output.to_hex().to_string());
            }
        }
        loras
    }

    /// Draws `jobs` (frames of sprites that share a [`GroupKey`]) with one drawer of their
    /// backend, storing each frame as it arrives. Frames the backend could not draw fail
    /// together at the end, after every other frame is stored.
    fn draw_group(
        &mut self,
        jobs: &[(usize, u32)],
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        progress: &mut dyn Progress,
        timings: &mut Timings,
        drawn_by: &mut BTreeMap<String, usize>,
    ) -> Result<Vec<String>, Error> {
        let first = jobs[0].0;
        let loras = self.group_loras(first);
        let planned = &self.plan[first];
        let sprite = &self.manifest.sprites[planned.sprite];
        let group = GroupInputs {
            sprite: &sprite.name,
            loras: &loras,
            files: &planned.files,
        };
        let mut drawer = sprite
            .generator
            .backend()
            .open(&group, &mut self.workshop, timings)?;
        self.draw_with(drawer.as_mut(), jobs, statuses, progress, timings, drawn_by)
    }

    /// Draws `jobs` with `drawer` and stores what it draws (see [`Self::draw_group`]).
    fn draw_with(
        &self,
        drawer: &mut dyn generate::Drawer,
        jobs: &[(usize, u32)],
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        progress: &mut dyn Progress,
        timings: &mut Timings,
        drawn_by: &mut BTreeMap<String, usize>,
    ) -> Result<Vec<String>, Error> {
        let this = self;
        let frames: Vec<Frame> = jobs
            .iter()
            .map(|&(i, frame)| {
                let sprite = &this.manifest.sprites[this.plan[i].sprite];
                Frame {
                    sprite: &sprite.name,
                    prompt: &sprite.prompt,
                    negative_prompt: &sprite.negative_prompt,
                    seed: sprite.seed,
                    frame,
                    frames: sprite.frames,
                    width: sprite.width,
                    height: sprite.height,
                }
            })
            .collect();
        let mut failures: Vec<(FrameId, String)> = Vec::new();
        let mut stored: Result<(), Error> = Ok(());
        let mut local = Timings::new();
        let drawn = drawer.draw(&frames, timings, &mut |index, drawn| {
            let (i, frame) = jobs[index];
            match drawn {
                Drawn::Image { image, server } => {
                    if let Some(server) = server {
                        progress.server_frame_done(&server);
                        *drawn_by.entry(server).or_default() += 1;
                    }
                    match this.store_drawn(statuses, i, frame, image, progress, &mut local) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(error) => {
                            stored = Err(error);
                            ControlFlow::Break(())
                        }
                    }
                }
                Drawn::Failed(message) => {
                    failures.push((frames[index].id(), message));
                    ControlFlow::Continue(())
                }
            }
        });
        timings.merge(&local);
        stored?;
        let notes = drawn?;
        if !failures.is_empty() {
            failures.sort();
            return Err(Error::Generate(GenerateError::Servers { failures }));
        }
        Ok(notes)
    }

    /// Stores a frame a generator drew: the raw image (when the sprite's raw images are
    /// kept), then the finished frame.
    fn store_drawn(
        &self,
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        i: usize,
        frame: u32,
        raw: image::RgbaImage,
        progress: &mut dyn Progress,
        timings: &mut Timings,
    ) -> Result<(), Error> {
        if let Some(key) = self.plan[i].frames[frame as usize].raw {
            let start = std::time::Instant::now();
            self.cache
                .write_raw(&key, &raw)
                .map_err(|source| Error::Cache {
                    path: self.cache.raw_path_of(&key),
                    source,
                })?;
            timings.add(Stage::EncodeWrite, start.elapsed());
        }
        self.store_finished(statuses, i, frame, raw, progress, timings)
    }

    /// Pixelizes a raw frame and stores the finished sprite frame in the cache.
    fn store_finished(
        &self,
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        i: usize,
        frame: u32,
        raw: image::RgbaImage,
        progress: &mut dyn Progress,
        timings: &mut Timings,
    ) -> Result<(), Error> {
        let sprite = &self.manifest.sprites[self.plan[i].sprite];
        let finished = timings.time(Stage::Pixelize, || pixelize::finish(raw, sprite));
        let planned = &self.plan[i].frames[frame as usize];
        let key = &planned.key;
        let output = timings
            .time(Stage::EncodeWrite, || self.cache.write(key, &finished))
            .map_err(|source| Error::Cache {
                path: self.cache.path_of(key),
                source,
            })?;
        statuses[i].1[frame as usize] = Lookup::Hit { output };
        progress.frame_done(&planned.id);
        Ok(())
    }

    /// Every trained LoRA's state, sorted by name.
    pub fn lora_statuses(&mut self) -> Vec<LoraStatus> {
        (0..self.trained.len())
            .map(|index| self.lora_status(index))
            .collect()
    }

    /// The cache's trained file for LoRA `index`, checked against the hash the lock
    /// recorded for the same key.
    fn lora_lookup(&mut self, index: usize) -> Lookup {
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
    fn lora_status(&mut self, index: usize) -> LoraStatus {
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
    fn trained_lora_changes(&self, planned: &PlannedSprite) -> Vec<String> {
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
    fn loras_to_train(&self, statuses: &[(SpriteStatus, Vec<Lookup>)]) -> Vec<usize> {
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
    fn train(&mut self, index: usize, progress: &mut dyn Progress) -> Result<(), Error> {
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

    /// Frame 0 of sprite `index` (in `plan` order) drawn with each of `seeds` and
    /// pixelized, in seed order, through the sprite's backend as a build draws it;
    /// nothing is stored. What an assistant's `variations` shows.
    pub fn draw_seeds(
        &mut self,
        index: usize,
        seeds: &[u64],
    ) -> Result<Vec<image::RgbaImage>, Error> {
        let loras = self.group_loras(index);
        let planned = &self.plan[index];
        let sprite = &self.manifest.sprites[planned.sprite];
        let group = GroupInputs {
            sprite: &sprite.name,
            loras: &loras,
            files: &planned.files,
        };
        let mut timings = Timings::new();
        let mut drawer =
            sprite
                .generator
                .backend()
                .open(&group, &mut self.workshop, &mut timings)?;
        let frames: Vec<Frame> = seeds
            .iter()
            .map(|&seed| Frame {
                sprite: &sprite.name,
                prompt: &sprite.prompt,
                negative_prompt: &sprite.negative_prompt,
                seed,
                frame: 0,
                frames: sprite.frames,
                width: sprite.width,
                height: sprite.height,
            })
            .collect();
        let mut drawn: Vec<Option<Result<image::RgbaImage, String>>> = vec![None; seeds.len()];
        drawer.draw(&frames, &mut timings, &mut |index, frame| {
            drawn[index] = Some(match frame {
                Drawn::Image { image, .. } => Ok(pixelize::finish(image, sprite)),
                Drawn::Failed(message) => Err(message),
            });
            ControlFlow::Continue(())
        })?;
        drawn
            .into_iter()
            .zip(seeds)
            .map(|(frame, seed)| match frame {
                Some(Ok(image)) => Ok(image),
                failed => Err(Error::Generate(GenerateError::Failed {
                    sprite: sprite.name.clone(),
                    message: format!(
                        "seed {seed}: {}",
                        failed.and_then(Result::err).unwrap_or("not drawn".into())
                    ),
                })),
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"(
        defaults: (size: (16, 16), palette: "sweetie-16"),
        sprites: {
            "slime": (prompt: "green slime", seed: 1, frames: 2),
            "coin":  (prompt: "gold coin", seed: 2),
        },
    )"#;

    fn project(dir: &Path, manifest: &str) -> Project {
        std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
        Project::for_crate(dir, Some(dir.join("cache")), None).unwrap()
    }

    fn session(project: &Project, offline: bool) -> Session {
        Session::open(
            project.clone(),
            FileHasher::in_memory(),
            &Environment::default(),
            offline,
        )
        .unwrap()
    }

    #[test]
    fn realize_only_generates_the_named_sprites_and_holds_the_others_back() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path(), MANIFEST);
        session(&project, false).realize(false, &mut Quiet).unwrap();
        let before = LockFile::load(&project.lock_path).unwrap();
        // Both prompts change; only the coin is asked for.
        let edited = MANIFEST
            .replace("green slime", "blue slime")
            .replace("gold coin", "silver coin");
        let project = self::project(dir.path(), &edited);
        let mut session = session(&project, false);
        let only = std::collections::BTreeSet::from([SpriteName::from("coin")]);
        let summary = session
            .realize_only(false, Some(&only), &mut Quiet)
            .unwrap();
        assert_eq!(
            (summary.generated, summary.cached, summary.held_back),
            (1, 0, 1)
        );
        let statuses = session.status();
        let slime = statuses.iter().find(|s| s.name == "slime").unwrap();
        assert_eq!(slime.status, Freshness::Stale);
        assert!(
            slime.reasons.iter().any(|r| r.contains("prompt")),
            "{:?}",
            slime.reasons
        );
        let lock = LockFile::load(&project.lock_path).unwrap();
        assert_eq!(lock.sprites["slime"], before.sprites["slime"]);
        assert_ne!(lock.sprites["coin"], before.sprites["coin"]);
        assert_eq!(
            statuses.iter().find(|s| s.name == "coin").unwrap().status,
            Freshness::Fresh
        );
    }

    #[test]
    fn generates_stale_sprites_once_and_records_them() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path(), MANIFEST);
        let mut first = session(&project, false);
        assert!(first.status().iter().all(|s| s.status == Freshness::Stale));
        let summary = first.realize(false, &mut Quiet).unwrap();
        assert_eq!(
            summary,
            Summary {
                sprites: 2,
                generated: 2,
                cached: 0,
                held_back: 0,
                notes: Vec::new(),
            }
        );
        assert_eq!(
            summary.to_string(),
            "pixelgen: 2 sprites: 2 generated, 0 cached"
        );
        let lock = LockFile::load(&project.lock_path).unwrap();
        assert_eq!(lock.sprites["slime"].keys.len(), 2);
        assert!(lock.sprites["slime"].outputs.iter().all(|o| o.len() == 64));

        let mut second = session(&project, true);
        assert!(second.status().iter().all(|s| s.status == Freshness::Fresh));
        assert_eq!(second.realize(true, &mut Quiet).unwrap().generated, 0);
    }

    #[test]
    fn offline_lists_stale_sprites_with_reasons_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path(), MANIFEST);
        session(&project, false).realize(false, &mut Quiet).unwrap();
        let edited = MANIFEST
            .replace("seed: 2", "seed: 3")
            .replace("green slime", "blue slime");
        std::fs::write(&project.manifest_path, &edited).unwrap();
        let error = match session(&project, true).realize(true, &mut Quiet) {
            Err(Error::Stale(report)) => report,
            other => panic!("expected a stale report, got {other:?}"),
        };
        let names: Vec<&str> = error.stale.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["coin", "slime"]);
        assert_eq!(error.stale[0].reasons, ["seed changed"]);
        assert_eq!(error.stale[1].reasons, ["prompt changed"]);
        let text = error.to_string();
        assert!(
            text.contains("cargo pixelgen generate --manifest-path"),
            "{text}"
        );
    }

    #[test]
    fn new_and_missing_entries_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path(), MANIFEST);
        let mut s = session(&project, false);
        assert_eq!(s.status()[0].reasons, ["new sprite (not in sprites.lock)"]);
        s.realize(false, &mut Quiet).unwrap();
        let key = s.plan[0].frames[0].key;
        std::fs::remove_file(s.cache().path_of(&key)).unwrap();
        let status = session(&project, true).status();
        assert_eq!(status[0].status, Freshness::Stale);
        assert!(
            status[0].reasons[0].starts_with("cache file missing"),
            "{:?}",
            status[0].reasons
        );
        assert_eq!(status[1].status, Freshness::Fresh);
    }

    #[cfg(unix)]
    #[test]
    fn the_next_generating_run_removes_what_a_killed_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path(), MANIFEST);
        session(&project, false).realize(false, &mut Quiet).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let litter = dir
            .path()
            .join("cache/ab")
            .join(format!("{}{dead}-x", crate::atomic::TEMP_PREFIX));
        std::fs::create_dir_all(litter.parent().unwrap()).unwrap();
        std::fs::write(&litter, b"half a png").unwrap();
        // Nothing to generate: the lock is not taken, nothing is swept.
        session(&project, false).realize(false, &mut Quiet).unwrap();
        assert!(litter.exists());
        std::fs::write(
            &project.manifest_path,
            MANIFEST.replace("seed: 2", "seed: 5"),
        )
        .unwrap();
        let summary = session(&project, false).realize(false, &mut Quiet).unwrap();
        assert!(!litter.exists());
        assert!(
            summary
                .notes
                .iter()
                .any(|n| n.contains("removed 1 temporary file(s) (10 bytes)")),
            "{:?}",
            summary.notes
        );
    }

    #[test]
    fn concurrent_runs_leave_a_consistent_cache() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path(), MANIFEST);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| session(&project, false).realize(false, &mut Quiet).unwrap());
            }
        });
        let mut check = session(&project, true);
        assert!(
            check.status().iter().all(|s| s.status == Freshness::Fresh),
            "{:?}",
            check.status()
        );
        for planned in &check.plan {
            for frame in &planned.frames {
                assert_eq!(
                    check.cache().read(&frame.key).unwrap().dimensions(),
                    (16, 16)
                );
            }
        }
        let leftovers: Vec<_> = pixelgen_test_support::fs::files(&dir.path().join("cache"))
            .into_iter()
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                !name.ends_with(".png") && name != ".gitignore" && name != LOCK_NAME
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// A backend that draws `good` batches, then fails.
    struct FailsAfter {
        good: usize,
    }

    impl generate::batched::Generator for FailsAfter {
        fn generate(
            &mut self,
            frames: &[Frame<'_>],
            _timings: &mut Timings,
        ) -> Result<Vec<image::RgbaImage>, generate::GenerateError> {
            if self.good == 0 {
                return Err(generate::GenerateError::Failed {
                    sprite: frames[0].sprite.clone(),
                    message: "device lost".into(),
                });
            }
            self.good -= 1;
            Ok(frames
                .iter()
                .map(|f| {
                    image::RgbaImage::from_pixel(f.width, f.height, image::Rgba([200, 10, 10, 255]))
                })
                .collect())
        }

        fn batch_size(&self) -> usize {
            1
        }
    }

    /// Batches that arrived before the backend failed are stored whole; the failure is
    /// reported naming the sprite; nothing partial or temporary is left in the cache.
    #[test]
    fn a_backend_failing_midway_keeps_finished_batches_and_leaves_no_litter() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(dir.path(), MANIFEST);
        let mut s = session(&project, false);
        let mut statuses = s.all_statuses();
        let jobs: Vec<(usize, u32)> = statuses
            .iter()
            .enumerate()
            .flat_map(|(i, (_, lookups))| (0..lookups.len() as u32).map(move |f| (i, f)))
            .collect();
        assert_eq!(jobs.len(), 3);
        let mut drawer = generate::batched::Batched::boxed(FailsAfter { good: 2 });
        let error = s
            .draw_with(
                drawer.as_mut(),
                &jobs,
                &mut statuses,
                &mut Quiet,
                &mut Timings::new(),
                &mut BTreeMap::new(),
            )
            .expect_err("the third batch fails")
            .to_string();
        assert!(error.contains("device lost"), "{error}");
        let stored: Vec<_> = statuses
            .iter()
            .flat_map(|(_, l)| l)
            .filter(|l| matches!(l, Lookup::Hit { .. }))
            .collect();
        assert_eq!(stored.len(), 2);
        let files: Vec<PathBuf> = pixelgen_test_support::fs::files(&dir.path().join("cache"));
        let pngs = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .count();
        assert_eq!(pngs, 2, "{files:?}");
        assert!(
            files
                .iter()
                .all(|p| !p.to_string_lossy().contains(".tmp-pixelgen")),
            "{files:?}"
        );
    }

    #[test]
    fn a_missing_diffusion_model_fails_naming_the_sprite_and_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(
            dir.path(),
            r#"(sprites: { "hero": (prompt: "knight", generator: Diffusion(model: "./models/none")) })"#,
        );
        let error = session(&project, false)
            .realize(false, &mut Quiet)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sprite `hero`") && error.contains("model `./models/none` not found"),
            "{error}"
        );
        assert!(
            error.contains(&dir.path().join("./models/none").display().to_string()),
            "{error}"
        );
    }

    #[cfg(feature = "diffusion")]
    /// Changing only the palette re-pixelizes the cached raw image: no model is needed
    /// (here it has been moved away, so loading it would fail).
    #[cfg(feature = "diffusion")]
    #[test]
    fn a_palette_change_reuses_the_raw_diffusion_image() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../pixelgen-diffusion/tests/fixtures/diffusion/sd1/model");
        pixelgen_test_support::fs::copy_dir(&fixture, &dir.path().join("model"));
        let manifest = |palette: &str| {
            format!(
                r#"(sprites: {{ "knight": (prompt: "knight", seed: 2, size: (16, 16), palette: "{palette}", frames: 2,
                    generator: Diffusion(model: "model", steps: 1, guidance: 1.0, scheduler: Euler, resolution: (64, 64))) }})"#
            )
        };
        let project = project(dir.path(), &manifest("pico-8"));
        let summary = session(&project, false).realize(false, &mut Quiet).unwrap();
        assert_eq!(summary.generated, 1);
        let raw_files = pixelgen_test_support::fs::files(&project.cache_dir.join("raw"));
        assert_eq!(raw_files.len(), 2, "one raw image per frame: {raw_files:?}");

        std::fs::rename(dir.path().join("model"), dir.path().join("moved")).unwrap();
        let project = self::project(dir.path(), &manifest("db16"));
        let mut second = session(&project, false);
        assert!(second.status().iter().all(|s| s.status == Freshness::Stale));
        let summary = second.realize(false, &mut Quiet).unwrap();
        assert_eq!(summary.generated, 1, "re-pixelized from the raw cache");
        assert_eq!(
            pixelgen_test_support::fs::files(&project.cache_dir.join("raw")).len(),
            2
        );
    }
}
