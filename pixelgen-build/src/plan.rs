//! Validated specs → one content key per sprite frame.
//!
//! A key is a blake3 hash of everything that determines a frame's pixels. The inputs
//! are hashed in named groups (prompt, seed, LoRAs, …) so that a stale sprite can say
//! which group changed; the lock file keeps each group's short hash for that purpose.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::diagnostics::{Diagnostic, SourceFile};
use crate::generate::server::{SERVER_VERSION, ServerKind};
use crate::identity::{FrameId, LoraName};
use crate::manifest::{
    Background, GeneratorSpec, LoraSource, Manifest, SpriteSpec, TrainedLoraSpec,
};
use crate::train::{TRAINING_VERSION, TrainingImage, TrainingSettings};

/// Bumped whenever a change to pixelgen changes the pixels it makes for the same inputs,
/// so that caches made by an older pipeline are regenerated rather than trusted.
pub const PIPELINE_VERSION: &str = "pixelgen-pipeline-1";

/// Bumped when the Diffusion backend's raw images change for the same inputs; part of the
/// generator input group, so of raw and finished keys alike.
/// 2: single-file checkpoints get the scheduler config diffusers gives them (SD1 files
/// sampled with Euler used `leading` spacing instead of `linspace`; SD 2.x files were
/// epsilon instead of v-prediction), and the version reached finished keys.
pub const DIFFUSION_VERSION: &str = "pixelgen-diffusion-2";

/// The content key of one frame of one sprite.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(hex: &str) -> Option<Key> {
        blake3::Hash::from_hex(hex).ok().map(|h| Key(*h.as_bytes()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.to_hex()[..16])
    }
}

/// A named group of a sprite's inputs. A frame's key hashes each group's name and
/// content in name order, and `sprites.lock` records a short hash per group, so that a
/// stale sprite can say which group changed.
///
/// Invariant: the variants are declared in the alphabetical order of their names, so the
/// derived `Ord` (the order of `InputHashes` and of hashing) is the order of the names
/// that keys were made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputGroup {
    Background,
    Frames,
    Generator,
    Loras,
    Model,
    NegativePrompt,
    Palette,
    Pipeline,
    Pixelize,
    Prompt,
    Seed,
    Size,
}

impl InputGroup {
    pub const ALL: [InputGroup; 12] = [
        InputGroup::Background,
        InputGroup::Frames,
        InputGroup::Generator,
        InputGroup::Loras,
        InputGroup::Model,
        InputGroup::NegativePrompt,
        InputGroup::Palette,
        InputGroup::Pipeline,
        InputGroup::Pixelize,
        InputGroup::Prompt,
        InputGroup::Seed,
        InputGroup::Size,
    ];

    /// The name hashed into keys and written in `sprites.lock`.
    pub const fn name(self) -> &'static str {
        match self {
            InputGroup::Background => "background",
            InputGroup::Frames => "frames",
            InputGroup::Generator => "generator",
            InputGroup::Loras => "loras",
            InputGroup::Model => "model",
            InputGroup::NegativePrompt => "negative_prompt",
            InputGroup::Palette => "palette",
            InputGroup::Pipeline => "pipeline",
            InputGroup::Pixelize => "pixelize",
            InputGroup::Prompt => "prompt",
            InputGroup::Seed => "seed",
            InputGroup::Size => "size",
        }
    }

    /// Whether a generated raw image depends on this group (its raw key covers it); size,
    /// palette, background and pixelizing act after generation.
    pub const fn shapes_raw_image(self) -> bool {
        matches!(
            self,
            InputGroup::Generator
                | InputGroup::Loras
                | InputGroup::Model
                | InputGroup::NegativePrompt
                | InputGroup::Prompt
                | InputGroup::Seed
        )
    }
}

/// The input groups of a sprite, each with a short hash.
pub type InputHashes = BTreeMap<InputGroup, String>;

/// An input file of a sprite, as `sprites.lock` records its content hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputFile {
    /// A LoRA, by the path written in the manifest.
    Lora(String),
    /// A Diffusion model (all its files as one identity), by the name in the manifest.
    Model(String),
    /// A LoRA pixelgen trains (`trained_loras`), by name; its "hash" is its key.
    TrainedLora(LoraName),
    /// The model of InvokeAI Server sprites, by the name in the manifest: its identity
    /// as the servers reported it ([`crate::generate::server::invokeai_identity`]).
    ServerModel(String),
    /// A ComfyUI workflow file, by the path written in the manifest.
    Workflow(String),
}

impl InputFile {
    /// The entry's name in the lock file's `files`: the LoRA's path, `model:<name>` or
    /// `trained:<name>`.
    pub fn lock_key(&self) -> String {
        match self {
            InputFile::Lora(path) => path.clone(),
            InputFile::Model(model) => format!("model:{model}"),
            InputFile::TrainedLora(name) => format!("trained:{name}"),
            InputFile::ServerModel(model) => format!("server-model:{model}"),
            InputFile::Workflow(path) => format!("workflow:{path}"),
        }
    }
}

/// The keys of a manifest: every sprite's and every trained LoRA's.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// In the order of `Manifest::sprites`.
    pub sprites: Vec<PlannedSprite>,
    /// In the order of `Manifest::trained_loras`: `loras[i]` plans `trained_loras[i]`.
    pub loras: Vec<PlannedLora>,
}

/// The plan for one sprite: its input groups and one planned frame per frame.
#[derive(Debug, Clone)]
pub struct PlannedSprite {
    /// Index into `Manifest::sprites`.
    pub sprite: usize,
    pub inputs: InputHashes,
    /// In frame order: `frames[n].id.frame == n`.
    pub frames: Vec<PlannedFrame>,
    /// Content hash (hex) of each input file: LoRAs and the model (a trained LoRA's key).
    pub files: BTreeMap<InputFile, String>,
    /// The sprite's LoRAs as files to load, in manifest order.
    pub loras: Vec<ResolvedLora>,
}

/// A sprite's LoRA as a backend loads it: a file (a trained one's is in the cache), its
/// weight, and its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLora {
    pub file: PathBuf,
    pub weight: f32,
    /// The file's content hash, or a trained LoRA's key (hex).
    pub hash: String,
    /// Set for a trained LoRA: its file exists only once it is trained.
    pub trained: Option<LoraName>,
}

/// The plan for one trained LoRA: its key over the images, captions, base model and
/// settings, and where the trained file lives in the cache.
#[derive(Debug, Clone)]
pub struct PlannedLora {
    pub key: Key,
    /// `cache/lora/<key>.safetensors`.
    pub file: PathBuf,
    /// The images, sorted by file name, with their captions.
    pub images: Vec<TrainingImage>,
    /// What `sprites.lock` records to say why it changed: short hashes of the model and
    /// the settings, and of each image (its bytes and caption) by file name.
    pub inputs: LoraInputs,
    /// The base model's identity (hex), as a sprite's `files` records it.
    pub files: BTreeMap<InputFile, String>,
}

/// The inputs of a trained LoRA, each as a short hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraInputs {
    pub model: String,
    pub settings: String,
    /// By image file name: its bytes and caption.
    pub images: BTreeMap<String, String>,
}

impl LoraInputs {
    /// What differs from `before`, as a user reads it: images added, removed or changed,
    /// the model, the settings.
    pub fn changes_since(&self, before: &LoraInputs) -> Vec<String> {
        let mut changes = Vec::new();
        for (image, hash) in &self.images {
            match before.images.get(image) {
                None => changes.push(format!("image {image} added")),
                Some(old) if old != hash => changes.push(format!("image {image} changed")),
                Some(_) => {}
            }
        }
        for image in before.images.keys() {
            if !self.images.contains_key(image) {
                changes.push(format!("image {image} removed"));
            }
        }
        if self.model != before.model {
            changes.push("base model changed".to_owned());
        }
        if self.settings != before.settings {
            changes.push("training settings changed".to_owned());
        }
        changes
    }
}

/// One frame as the later stages know it: its identity and the cache keys it lives under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFrame {
    pub id: FrameId,
    /// The finished (pixelized) frame's key.
    pub key: Key,
    /// Diffusion sprites: the key over only what the raw generated image depends on (not
    /// size, palette or background), so a post-processing change reuses that image.
    pub raw: Option<Key>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A LoRA file or ComfyUI workflow that cannot be read, pointed at in the manifest.
    #[error("{0}")]
    InputUnreadable(Box<Diagnostic>),
    /// A trained LoRA's images that cannot be read, pointed at in the manifest.
    #[error("{0}")]
    TrainingImages(Box<Diagnostic>),
}

/// Hashes files by content, remembering each file's hash by (path, size, mtime) so
/// that a no-op build re-reads nothing. Its state lives in one small JSON file.
///
/// Large files (model weights, big LoRAs) are also remembered in a store shared by every
/// process that uses the same cache folder — `cargo pixelgen` and the build scripts of
/// every crate of the workspace — so a multi-gigabyte model is read to be hashed once per
/// (path, size, mtime) on a machine, not once per build folder.
#[derive(Debug, Default)]
pub struct FileHasher {
    state_file: Option<PathBuf>,
    // Hashed, not ordered: ordering paths compares them component by component.
    stamps: HashMap<PathBuf, Stamp>,
    dirty: bool,
    shared: Option<SharedStamps>,
    /// Time spent reading files to hash them (stamp hits cost nothing), for timings.
    reading: std::time::Duration,
    /// How many files were read to be hashed.
    files_read: u64,
}

/// The stamps of large files, in a file several processes read and merge into.
#[derive(Debug)]
struct SharedStamps {
    path: PathBuf,
    /// Files at least this large go through the shared store.
    min_size: u64,
    /// Read on the first large file that misses the local stamps (never on a no-op).
    loaded: Option<HashMap<PathBuf, Stamp>>,
    /// Stamps this process computed, merged into the file by `save`.
    new: HashMap<PathBuf, Stamp>,
}

/// Files from this size on are shared between build folders (model weights, large LoRAs).
pub const SHARED_STAMP_MIN_SIZE: u64 = 16 << 20;

/// Files from this size on are hashed through a memory map on all cores.
const PARALLEL_HASH_MIN_SIZE: u64 = 16 << 20;

fn read_stamps(path: &Path) -> Option<HashMap<PathBuf, Stamp>> {
    let bytes = std::fs::read(path).ok()?;
    let list: Vec<(PathBuf, Stamp)> = serde_json::from_slice(&bytes).ok()?;
    Some(list.into_iter().collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
    #[serde(with = "hex_hash")]
    hash: [u8; 32],
}

/// Hashes as hex strings: 32 JSON numbers per stamp made the state file slow to read.
mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(blake3::Hash::from_bytes(*hash).to_hex().as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        blake3::Hash::from_hex(text)
            .map(|h| *h.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

impl FileHasher {
    /// A hasher that remembers nothing between runs.
    pub fn in_memory() -> Self {
        FileHasher::default()
    }

    /// A hasher whose stamps persist in `state_file` (read now, written by `save`).
    /// A missing or unreadable state file only means more hashing.
    pub fn persistent(state_file: PathBuf) -> Self {
        FileHasher {
            stamps: read_stamps(&state_file).unwrap_or_default(),
            state_file: Some(state_file),
            ..FileHasher::default()
        }
    }

    /// Also remembers files of `min_size` bytes or more in the shared store `path`
    /// (read lazily, merged into on `save`).
    pub fn share_large_files(&mut self, path: PathBuf, min_size: u64) {
        self.shared = Some(SharedStamps {
            path,
            min_size,
            loaded: None,
            new: HashMap::new(),
        });
    }

    /// blake3 of the file's bytes. Only regular files are read (a FIFO or a device would
    /// never end), up to the largest model file.
    pub fn hash(&mut self, path: &Path) -> std::io::Result<blake3::Hash> {
        use crate::input_file::{InputFileError, MAX_MODEL_FILE_BYTES, checked_metadata};
        let metadata =
            checked_metadata(path, MAX_MODEL_FILE_BYTES, "weight file").map_err(|e| match e {
                InputFileError::Unreadable { source, .. } => source,
                InputFileError::Missing { .. } => {
                    std::io::Error::new(std::io::ErrorKind::NotFound, e)
                }
                other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
            })?;
        let mtime_ns = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let size = metadata.len();
        let matches = |stamp: &Stamp| stamp.size == size && stamp.mtime_ns == mtime_ns;
        if mtime_ns != 0 {
            if let Some(stamp) = self.stamps.get(path).filter(|s| matches(s)) {
                return Ok(blake3::Hash::from_bytes(stamp.hash));
            }
            if let Some(shared) = self.shared.as_mut().filter(|s| size >= s.min_size) {
                let loaded = shared
                    .loaded
                    .get_or_insert_with(|| read_stamps(&shared.path).unwrap_or_default());
                if let Some(stamp) = loaded.get(path).copied().filter(|s| matches(s)) {
                    self.stamps.insert(path.to_path_buf(), stamp);
                    self.dirty = true;
                    return Ok(blake3::Hash::from_bytes(stamp.hash));
                }
            }
        }
        let start = std::time::Instant::now();
        let mut hasher = blake3::Hasher::new();
        if size >= PARALLEL_HASH_MIN_SIZE {
            hasher.update_mmap_rayon(path)?;
        } else {
            hasher.update_reader(std::fs::File::open(path)?)?;
        }
        let hash = hasher.finalize();
        self.reading += start.elapsed();
        self.files_read += 1;
        let stamp = Stamp {
            size,
            mtime_ns,
            hash: *hash.as_bytes(),
        };
        self.stamps.insert(path.to_path_buf(), stamp);
        self.dirty = true;
        if let Some(shared) = self.shared.as_mut().filter(|s| size >= s.min_size) {
            shared.new.insert(path.to_path_buf(), stamp);
        }
        Ok(hash)
    }

    /// The time spent reading files to hash them since the last call.
    pub fn take_reading_time(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.reading)
    }

    /// Whether `save` has large-file stamps to add to the shared store.
    pub fn has_unsaved_shared_stamps(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| !s.new.is_empty())
    }

    /// How many files were read to be hashed so far (not answered from a stamp).
    pub fn files_read(&self) -> u64 {
        self.files_read
    }

    /// Writes the stamps back if anything changed (atomically; failure only costs
    /// re-hashing next time, so it is not an error). New large-file stamps are merged
    /// into the shared store as it is now on disk, so concurrent savers lose at most
    /// each other's latest entries, never the file.
    pub fn save(&mut self) {
        if let Some(shared) = self.shared.as_mut()
            && !shared.new.is_empty()
        {
            let mut merged = read_stamps(&shared.path).unwrap_or_default();
            merged.extend(shared.new.drain());
            let list: Vec<(&PathBuf, &Stamp)> = merged.iter().collect();
            if let Ok(bytes) = serde_json::to_vec(&list) {
                let _ = crate::atomic::write_atomically(&shared.path, &bytes);
            }
            shared.loaded = Some(merged);
        }
        let Some(state_file) = &self.state_file else {
            return;
        };
        if !self.dirty {
            return;
        }
        let list: Vec<(&PathBuf, &Stamp)> = self.stamps.iter().collect();
        if let Ok(bytes) = serde_json::to_vec(&list)
            && crate::atomic::write_atomically(state_file, &bytes).is_ok()
        {
            self.dirty = false;
        }
    }
}

/// Where a LoRA's content hash comes from when the file itself is absent (offline
/// builds need not have the LoRA files): the hashes recorded in the lock file.
pub trait KnownFileHashes {
    fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash>;
}

/// Computes the key of every trained LoRA and of every frame of every sprite. Models
/// named by Hugging Face id are looked up in `hub_cache`; trained LoRAs live in `cache`.
pub fn plan(
    manifest: &Manifest,
    hasher: &mut FileHasher,
    known: &dyn KnownFileHashes,
    allow_missing_files: bool,
    hub_cache: Option<&Path>,
    cache: &Cache,
) -> Result<Plan, PlanError> {
    let mut files = InputFiles {
        hasher,
        known,
        allow_missing_files,
        hub_cache,
        memo: HashMap::new(),
        models: HashMap::new(),
        manifest_dir: manifest
            .source
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    let loras = manifest
        .trained_loras
        .iter()
        .map(|lora| plan_lora(&manifest.source, lora, &mut files, cache))
        .collect::<Result<Vec<_>, _>>()?;
    let sprites = manifest
        .sprites
        .iter()
        .enumerate()
        .map(|(index, sprite)| {
            plan_sprite(
                &manifest.source,
                index,
                sprite,
                &mut files,
                manifest,
                &loras,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan { sprites, loras })
}

/// A trained LoRA's key: the training code's version, the base model's identity, every
/// setting, and each image's name, bytes and caption (sorted by name).
fn plan_lora(
    source_file: &SourceFile,
    lora: &TrainedLoraSpec,
    input_files: &mut InputFiles<'_>,
    cache: &Cache,
) -> Result<PlannedLora, PlanError> {
    let unreadable = |message: String| {
        PlanError::TrainingImages(Box::new(
            Diagnostic::new(
                source_file,
                lora.span.clone(),
                format!("trained LoRA `{}`: {message}", lora.name),
            )
            .label("this LoRA's images")
            .help("`images` names a folder of PNGs (each with an optional NAME.txt caption), relative to the folder of sprites.ron"),
        ))
    };
    let images =
        crate::train::images_in(&lora.images_dir, &lora.settings.caption).map_err(unreadable)?;
    let mut inputs = LoraInputs::default();
    let mut all = blake3::Hasher::new_derive_key("pixelgen trained LoRA key v1");
    all.update(TRAINING_VERSION.as_bytes()).update(&[0]);
    let model = input_files.model_hash(&lora.model);
    all.update(model.as_bytes());
    inputs.model = model.to_hex()[..16].to_string();
    let settings = blake3::hash(&settings_group(&lora.settings).0);
    all.update(settings.as_bytes());
    inputs.settings = settings.to_hex()[..16].to_string();
    for image in &images {
        let bytes = input_files
            .hasher
            .hash(&image.path)
            .map_err(|e| unreadable(format!("cannot read {}: {e}", image.path.display())))?;
        let hash = blake3::hash(
            &Canonical::new()
                .bytes(bytes.as_bytes())
                .str(&image.caption)
                .take()
                .0,
        );
        all.update(image.file_name.as_bytes())
            .update(&[0])
            .update(hash.as_bytes());
        inputs
            .images
            .insert(image.file_name.clone(), hash.to_hex()[..16].to_string());
    }
    let key = Key(*all.finalize().as_bytes());
    Ok(PlannedLora {
        file: cache.lora_path_of(&key),
        key,
        images,
        inputs,
        files: BTreeMap::from([(
            InputFile::Model(lora.model.clone()),
            model.to_hex().to_string(),
        )]),
    })
}

fn settings_group(settings: &TrainingSettings) -> Canonical {
    let TrainingSettings {
        rank,
        alpha,
        steps,
        learning_rate,
        batch,
        resolution,
        seed,
        caption,
        background,
        conv,
        text_encoder,
    } = settings;
    let mut c = Canonical::new();
    c.u64(*rank as u64)
        .u64(alpha.to_bits())
        .u64(*steps as u64)
        .u64(learning_rate.to_bits())
        .u64(*batch as u64);
    match resolution {
        Some((w, h)) => c.u64((*w).into()).u64((*h).into()),
        None => c.str("model-resolution"),
    };
    c.u64(*seed)
        .str(caption)
        .bytes(background)
        .u64(u64::from(*conv))
        .u64(u64::from(*text_encoder));
    c
}

/// Content hashes of input files for one planning run. Many sprites share a LoRA
/// file: it is looked at once per run, not once per sprite.
struct InputFiles<'a> {
    hasher: &'a mut FileHasher,
    known: &'a dyn KnownFileHashes,
    allow_missing_files: bool,
    hub_cache: Option<&'a Path>,
    memo: HashMap<PathBuf, blake3::Hash>,
    /// Identity of each model named in the manifest.
    models: HashMap<String, blake3::Hash>,
    manifest_dir: PathBuf,
}

impl InputFiles<'_> {
    /// A LoRA file's content hash (from the lock file when it is absent and that is
    /// allowed).
    fn hash(&mut self, path: &str, resolved: &Path) -> std::io::Result<blake3::Hash> {
        self.hash_file(InputFile::Lora(path.to_owned()), resolved)
    }

    /// An input file's content hash (from the lock file under `file`'s name when it is
    /// absent and that is allowed).
    fn hash_file(&mut self, file: InputFile, resolved: &Path) -> std::io::Result<blake3::Hash> {
        if let Some(hash) = self.memo.get(resolved) {
            return Ok(*hash);
        }
        let hash = match self.hasher.hash(resolved) {
            Ok(hash) => hash,
            Err(error) => match self.known.known_hash(&file) {
                Some(hash) if self.allow_missing_files => hash,
                _ => return Err(error),
            },
        };
        self.memo.insert(resolved.to_path_buf(), hash);
        Ok(hash)
    }

    /// The identity of an InvokeAI Server sprite's model: what the servers reported this
    /// run (online builds ask them first), else what the lock file recorded; with
    /// neither, an identity that matches no cache entry (the sprite is stale, and
    /// generating it asks the servers).
    fn server_model_hash(&mut self, model: &str) -> blake3::Hash {
        self.known
            .known_hash(&InputFile::ServerModel(model.to_string()))
            .unwrap_or_else(|| {
                blake3::hash(format!("pixelgen unresolved server model {model}").as_bytes())
            })
    }

    /// A Diffusion model's identity: the content of its weight, config and tokenizer
    /// files (hashed once, then remembered by stamp). A model that is not on this machine
    /// takes the identity recorded in the lock file, so teammates and CI without the model
    /// still find their cached sprites fresh; with neither, an identity that matches no
    /// cache entry, so the sprite is stale and generating it says the model is missing.
    fn model_hash(&mut self, model: &str) -> blake3::Hash {
        if let Some(hash) = self.models.get(model) {
            return *hash;
        }
        let located =
            crate::generate::model_files::locate(model, &self.manifest_dir, self.hub_cache);
        let hash = match located {
            Ok(location) => {
                let root = location.path().to_path_buf();
                let mut all = blake3::Hasher::new_derive_key("pixelgen model identity v1");
                let mut complete = true;
                for file in location.content_files() {
                    let relative = file
                        .strip_prefix(&root)
                        .unwrap_or(&file)
                        .to_string_lossy()
                        .replace('\\', "/");
                    match self.hasher.hash(&file) {
                        Ok(hash) => {
                            all.update(relative.as_bytes())
                                .update(&[0])
                                .update(hash.as_bytes());
                        }
                        Err(_) => complete = false,
                    }
                }
                match (
                    complete,
                    self.known.known_hash(&InputFile::Model(model.to_string())),
                ) {
                    (false, Some(known)) => known,
                    _ => all.finalize(),
                }
            }
            Err(_) => self
                .known
                .known_hash(&InputFile::Model(model.to_string()))
                .unwrap_or_else(|| {
                    blake3::hash(format!("pixelgen unresolved model {model}").as_bytes())
                }),
        };
        self.models.insert(model.to_string(), hash);
        hash
    }
}

fn plan_sprite(
    source_file: &SourceFile,
    index: usize,
    sprite: &SpriteSpec,
    input_files: &mut InputFiles<'_>,
    manifest: &Manifest,
    trained: &[PlannedLora],
) -> Result<PlannedSprite, PlanError> {
    let mut files = BTreeMap::new();
    let mut loras = Canonical::new();
    let mut resolved_loras = Vec::with_capacity(sprite.loras.len());
    for lora in &sprite.loras {
        match &lora.source {
            LoraSource::File { path, resolved } => {
                let hash = input_files.hash(path, resolved).map_err(|source| {
                    let message = format!(
                        "sprite `{}`: cannot read LoRA file {}: {source}",
                        sprite.name,
                        resolved.display()
                    );
                    PlanError::InputUnreadable(Box::new(
                        Diagnostic::new(source_file, lora.span.clone(), message)
                            .label("this file")
                            .help("LoRA paths are relative to the folder of sprites.ron; offline builds also accept a missing file whose hash is in sprites.lock"),
                    ))
                })?;
                files.insert(InputFile::Lora(path.clone()), hash.to_hex().to_string());
                loras.bytes(hash.as_bytes()).f32(lora.weight);
                resolved_loras.push(ResolvedLora {
                    file: resolved.clone(),
                    weight: lora.weight,
                    hash: hash.to_hex().to_string(),
                    trained: None,
                });
            }
            LoraSource::Trained(name) => {
                // The manifest checked that every name is declared.
                let Some(planned) = manifest
                    .trained_lora_index(name)
                    .and_then(|index| trained.get(index))
                else {
                    continue;
                };
                // The trained LoRA's key stands for its content: the same inputs train
                // the same factors, and a sprite is fresh without the file being here.
                files.insert(InputFile::TrainedLora(name.clone()), planned.key.to_hex());
                loras.str("trained").bytes(&planned.key.0).f32(lora.weight);
                resolved_loras.push(ResolvedLora {
                    file: planned.file.clone(),
                    weight: lora.weight,
                    hash: planned.key.to_hex(),
                    trained: Some(name.clone()),
                });
            }
        }
    }

    let mut groups: Vec<(InputGroup, Canonical)> = vec![
        (
            InputGroup::Prompt,
            Canonical::new().str(&sprite.prompt).take(),
        ),
        (
            InputGroup::NegativePrompt,
            Canonical::new().str(&sprite.negative_prompt).take(),
        ),
        (InputGroup::Seed, Canonical::new().u64(sprite.seed).take()),
        (
            InputGroup::Size,
            Canonical::new()
                .u64(sprite.width.into())
                .u64(sprite.height.into())
                .take(),
        ),
        (
            InputGroup::Frames,
            Canonical::new().u64(sprite.frames.into()).take(),
        ),
        (InputGroup::Generator, generator_group(&sprite.generator)),
        (InputGroup::Loras, loras),
        (
            InputGroup::Palette,
            match &sprite.palette {
                Some(p) => Canonical::new().bytes(&p.to_bytes()).take(),
                None => Canonical::new().str("none").take(),
            },
        ),
        (InputGroup::Background, background_group(sprite.background)),
        (
            InputGroup::Pipeline,
            Canonical::new().str(PIPELINE_VERSION).take(),
        ),
    ];
    // Pixelizing options and the pixelizer's version matter where the raw image is
    // pixelized or an option is set (procedural keys without options stay as they were).
    let pixelized = sprite.generator.draws_raw_images();
    if pixelized || sprite.max_colors.is_some() || sprite.outline.is_some() {
        let mut c = Canonical::new();
        c.str(crate::pixelize::PIXELIZE_VERSION);
        match sprite.max_colors {
            Some(n) => c.u64(n.into()),
            None => c.str("all-colors"),
        };
        match sprite.outline {
            Some(rgb) => c.str("outline").bytes(&rgb),
            None => c.str("no-outline"),
        };
        // A true-pixel sprite's `max_colors` is applied by `limit_colors` (it was once
        // ignored: its keys changed when that was fixed).
        if !pixelized && sprite.max_colors.is_some() && sprite.palette.is_none() {
            c.str(crate::pixelize::LIMIT_COLORS_VERSION);
        }
        groups.push((InputGroup::Pixelize, c));
    }
    // Only diffusion and server sprites have a model (procedural keys stay as they were).
    match &sprite.generator {
        GeneratorSpec::Diffusion { model, .. } => {
            let hash = input_files.model_hash(model);
            files.insert(InputFile::Model(model.clone()), hash.to_hex().to_string());
            groups.push((
                InputGroup::Model,
                Canonical::new().bytes(hash.as_bytes()).take(),
            ));
        }
        GeneratorSpec::Server(spec) => {
            let identity = match (&spec.kind, &spec.workflow) {
                (ServerKind::ComfyUI, Some(workflow)) => {
                    let hash = input_files
                        .hash_file(
                            InputFile::Workflow(workflow.path.clone()),
                            &workflow.resolved,
                        )
                        .map_err(|source| {
                            PlanError::InputUnreadable(Box::new(
                                Diagnostic::new(
                                    source_file,
                                    sprite.span.clone(),
                                    format!(
                                        "sprite `{}`: cannot read workflow {}: {source}",
                                        sprite.name,
                                        workflow.resolved.display()
                                    ),
                                )
                                .help("workflow paths are relative to the folder of sprites.ron"),
                            ))
                        })?;
                    files.insert(
                        InputFile::Workflow(workflow.path.clone()),
                        hash.to_hex().to_string(),
                    );
                    crate::generate::server::comfyui::identity(&hash, spec)
                }
                _ => {
                    let hash = input_files.server_model_hash(&spec.model);
                    files.insert(
                        InputFile::ServerModel(spec.model.clone()),
                        hash.to_hex().to_string(),
                    );
                    hash
                }
            };
            groups.push((
                InputGroup::Model,
                Canonical::new().bytes(identity.as_bytes()).take(),
            ));
        }
        GeneratorSpec::Procedural => {}
    }
    groups.sort_by_key(|(group, _)| *group);

    let mut all = blake3::Hasher::new_derive_key("pixelgen sprite frame key v1");
    let mut inputs = InputHashes::new();
    for (name, group) in &groups {
        let hash = blake3::hash(&group.0);
        all.update(name.name().as_bytes())
            .update(&[0])
            .update(hash.as_bytes());
        inputs.insert(*name, hash.to_hex()[..16].to_string());
    }
    let frame_keys = |base: &blake3::Hasher| -> Vec<Key> {
        (0..sprite.frames)
            .map(|frame| {
                let mut hasher = base.clone();
                hasher.update(b"frame").update(&frame.to_le_bytes());
                Key(*hasher.finalize().as_bytes())
            })
            .collect()
    };
    let keys = frame_keys(&all);
    let raw_keys = sprite.generator.draws_raw_images().then(|| {
        let mut raw = blake3::Hasher::new_derive_key("pixelgen raw frame key v1");
        for (name, group) in &groups {
            if name.shapes_raw_image() {
                raw.update(name.name().as_bytes())
                    .update(&[0])
                    .update(blake3::hash(&group.0).as_bytes());
            }
        }
        frame_keys(&raw)
    });
    let frames = keys
        .into_iter()
        .enumerate()
        .map(|(frame, key)| PlannedFrame {
            id: sprite.name.frame(frame as u32),
            key,
            raw: raw_keys.as_ref().map(|raw| raw[frame]),
        })
        .collect();
    Ok(PlannedSprite {
        sprite: index,
        inputs,
        frames,
        files,
        loras: resolved_loras,
    })
}

fn generator_group(generator: &GeneratorSpec) -> Canonical {
    match generator {
        GeneratorSpec::Procedural => Canonical::new()
            .str("procedural")
            .str(crate::generate::PROCEDURAL_VERSION)
            .take(),
        GeneratorSpec::Diffusion {
            model,
            steps,
            guidance,
            scheduler,
            resolution,
        } => {
            let mut c = Canonical::new();
            // The backend's version is part of the generator, so that the raw key and the
            // finished key (which hashes every group the raw key does) both change with it.
            c.str("diffusion")
                .str(DIFFUSION_VERSION)
                .str(model)
                .u64((*steps).into())
                .f32(*guidance);
            c.str(scheduler.name());
            match resolution {
                Some((w, h)) => c.u64((*w).into()).u64((*h).into()),
                None => c.str("default-resolution"),
            };
            c
        }
        // The URLs are not here: the same model on another server draws the same art.
        // The model's identity is the Model group.
        GeneratorSpec::Server(spec) => {
            let mut c = Canonical::new();
            c.str("server")
                .str(SERVER_VERSION)
                .str(spec.kind.name())
                .u64(spec.steps.into())
                .f32(spec.guidance)
                .str(&spec.scheduler);
            match spec.resolution {
                Some((w, h)) => c.u64(w.into()).u64(h.into()),
                None => c.str("default-resolution"),
            };
            c
        }
    }
}

fn background_group(background: Background) -> Canonical {
    match background {
        Background::Transparent => Canonical::new().str("transparent").take(),
        Background::Keep => Canonical::new().str("keep").take(),
        Background::Color(rgb) => Canonical::new().str("color").bytes(&rgb).take(),
    }
}

/// An unambiguous byte encoding: every field is length- or width-prefixed, so
/// ("ab","c") and ("a","bc") hash differently.
#[derive(Default)]
struct Canonical(Vec<u8>);

impl Canonical {
    fn new() -> Self {
        Canonical::default()
    }
    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn f32(&mut self, v: f32) -> &mut Self {
        // -0.0 and 0.0 draw the same picture.
        let v = if v == 0.0 { 0.0f32 } else { v };
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
        self
    }
    fn take(&mut self) -> Self {
        std::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn no_cache() -> Cache {
        Cache::new("cache")
    }

    struct NoneKnown;
    impl KnownFileHashes for NoneKnown {
        fn known_hash(&self, _: &InputFile) -> Option<blake3::Hash> {
            None
        }
    }

    fn keys(text: &str) -> Vec<(String, Vec<Key>)> {
        let m = parse(Path::new("sprites.ron"), text).unwrap();
        plan(
            &m,
            &mut FileHasher::in_memory(),
            &NoneKnown,
            false,
            None,
            &no_cache(),
        )
        .unwrap()
        .sprites
        .into_iter()
        .map(|p| {
            let keys = p.frames.iter().map(|f| f.key).collect();
            (m.sprites[p.sprite].name.to_string(), keys)
        })
        .collect()
    }

    const BASE: &str = r#"(sprites: { "a": (prompt: "red slime", seed: 1), "b": (prompt: "bat", seed: 2, frames: 3) })"#;

    #[test]
    fn input_groups_are_ordered_by_their_names() {
        // Keys hash the groups in this order: it must stay the order of the names.
        let mut by_name = InputGroup::ALL;
        by_name.sort_by_key(|g| g.name());
        assert_eq!(by_name, InputGroup::ALL);
        let mut by_ord = InputGroup::ALL;
        by_ord.sort();
        assert_eq!(by_ord, InputGroup::ALL);
    }

    #[test]
    fn input_files_have_the_lock_file_names() {
        assert_eq!(
            InputFile::Lora("loras/a.safetensors".into()).lock_key(),
            "loras/a.safetensors"
        );
        assert_eq!(InputFile::Model("org/sd".into()).lock_key(), "model:org/sd");
        assert_eq!(
            InputFile::ServerModel("xl".into()).lock_key(),
            "server-model:xl"
        );
        assert_eq!(
            InputFile::Workflow("w/a.json".into()).lock_key(),
            "workflow:w/a.json"
        );
    }

    /// Keys of server sprites, with `reported` as the model identity the servers gave.
    fn server_keys(
        text: &str,
        reported: Option<blake3::Hash>,
    ) -> Vec<(Vec<Key>, BTreeMap<InputFile, String>)> {
        struct Reported(Option<blake3::Hash>);
        impl KnownFileHashes for Reported {
            fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash> {
                matches!(file, InputFile::ServerModel(_))
                    .then_some(self.0)
                    .flatten()
            }
        }
        let m = parse(Path::new("sprites.ron"), text).unwrap();
        plan(
            &m,
            &mut FileHasher::in_memory(),
            &Reported(reported),
            false,
            None,
            &no_cache(),
        )
        .unwrap()
        .sprites
        .into_iter()
        .map(|p| (p.frames.iter().map(|f| f.key).collect(), p.files))
        .collect()
    }

    #[test]
    fn server_keys_cover_the_reported_model_and_settings_but_not_the_url() {
        let sprite = |generator: &str| {
            format!(r#"(sprites: {{ "a": (prompt: "slime", seed: 1, generator: {generator}) }})"#)
        };
        let reported = blake3::hash(b"model on the server");
        let identity = Some(reported);
        let base = server_keys(
            &sprite(r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4)"#),
            identity,
        );
        let (keys, files) = &base[0];
        assert_eq!(
            files.get(&InputFile::ServerModel("m".into())),
            Some(&reported.to_hex().to_string()),
            "the lock records the reported identity"
        );
        // Another URL, or several: the same art.
        for same in [
            r#"Server(url: "http://127.0.0.1:9092", model: "m", steps: 4)"#,
            r#"Server(url: ["https://gpu-1.lan", "http://127.0.0.1:1"], model: "m", steps: 4)"#,
        ] {
            assert_eq!(&server_keys(&sprite(same), identity)[0].0, keys, "{same}");
        }
        // Another model on the server, another setting, or no identity known: other keys.
        assert_ne!(
            &server_keys(
                &sprite(r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4)"#),
                Some(blake3::hash(b"retrained"))
            )[0]
            .0,
            keys
        );
        assert_ne!(
            &server_keys(
                &sprite(r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4)"#),
                None
            )[0]
            .0,
            keys
        );
        for other in [
            r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 5)"#,
            r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4, guidance: 6.0)"#,
            r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4, scheduler: "ddim")"#,
            r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4, resolution: (64, 64))"#,
        ] {
            assert_ne!(&server_keys(&sprite(other), identity)[0].0, keys, "{other}");
        }
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let first = keys(BASE);
        assert_eq!(first, keys(BASE));
        assert_eq!(first[1].1.len(), 3);
        let mut all: Vec<Key> = first.iter().flat_map(|(_, k)| k.clone()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4, "every frame has its own key");
    }

    #[test]
    fn each_input_changes_only_its_sprite() {
        let base = keys(BASE);
        for changed in [
            BASE.replace("red slime", "blue slime"),
            BASE.replace("seed: 1", "seed: 9"),
            BASE.replace("seed: 1)", "seed: 1, size: (16, 16))"),
            BASE.replace("seed: 1)", "seed: 1, negative_prompt: \"eyes\")"),
            BASE.replace("seed: 1)", "seed: 1, palette: \"pico-8\")"),
            BASE.replace("seed: 1)", "seed: 1, background: Color(\"#000000\"))"),
            BASE.replace("seed: 1)", "seed: 1, max_colors: 4)"),
            BASE.replace("seed: 1)", "seed: 1, outline: \"#000000\")"),
        ] {
            let now = keys(&changed);
            assert_ne!(now[0].1, base[0].1, "{changed}");
            assert_eq!(now[1].1, base[1].1, "{changed}");
        }
        // Where a sprite sits in the file, and its atlas, do not change its pixels.
        let reordered = r#"(sprites: { "b": (prompt: "bat", seed: 2, frames: 3), "a": (prompt: "red slime", seed: 1) })"#;
        assert_eq!(keys(reordered), base);
    }

    #[test]
    fn lora_contents_and_weight_are_in_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let lora = dir.path().join("style.safetensors");
        std::fs::write(&lora, b"one").unwrap();
        let text = r#"(sprites: { "a": (prompt: "x", loras: [(path: "style.safetensors", weight: 0.5)]), "b": (prompt: "y") })"#;
        let manifest_path = dir.path().join("sprites.ron");
        let run = |text: &str| {
            let m = parse(&manifest_path, text).unwrap();
            plan(
                &m,
                &mut FileHasher::in_memory(),
                &NoneKnown,
                false,
                None,
                &no_cache(),
            )
            .unwrap()
            .sprites
        };
        let before = run(text);
        std::fs::write(&lora, b"two").unwrap();
        let after = run(text);
        assert_ne!(before[0].frames, after[0].frames);
        assert_eq!(before[1].frames, after[1].frames);
        assert_ne!(before[0].files, after[0].files);
        assert_ne!(run(&text.replace("0.5", "0.6"))[0].frames, after[0].frames);
        std::fs::remove_file(&lora).unwrap();
        let m = parse(&manifest_path, text).unwrap();
        let error = plan(
            &m,
            &mut FileHasher::in_memory(),
            &NoneKnown,
            true,
            None,
            &no_cache(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("style.safetensors"), "{error}");
        assert!(
            error.contains("sprites.ron:1:"),
            "located in the manifest: {error}"
        );
    }

    /// A trained LoRA's key covers each image's bytes and caption, the image list and the
    /// settings; its sprites' keys follow it and no other sprite's do; what changed is
    /// named per image.
    #[test]
    fn trained_lora_inputs_are_in_its_key_and_its_sprites_keys() {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("art");
        std::fs::create_dir_all(&art).unwrap();
        std::fs::write(art.join("a.png"), b"a").unwrap();
        std::fs::write(art.join("b.png"), b"b").unwrap();
        let manifest_path = dir.path().join("sprites.ron");
        let text = r#"(trained_loras: { "s": (images: "art", model: "m", rank: 4) },
            sprites: { "x": (prompt: "x", loras: [(trained: "s", weight: 0.5)]), "y": (prompt: "y") })"#;
        let run = |text: &str| {
            let m = parse(&manifest_path, text).unwrap();
            plan(
                &m,
                &mut FileHasher::in_memory(),
                &NoneKnown,
                false,
                None,
                &Cache::new(dir.path().join("cache")),
            )
            .unwrap()
        };
        let before = run(text);
        let lora = &before.loras[0];
        assert_eq!(lora.images.len(), 2);
        assert_eq!(
            lora.file,
            dir.path()
                .join("cache/lora")
                .join(format!("{}.safetensors", lora.key.to_hex()))
        );
        assert_eq!(before.sprites[0].loras[0].trained, Some("s".into()));
        assert_eq!(before.sprites[0].loras[0].file, lora.file);

        let changed = |after: &Plan, what: &[&str]| {
            assert_ne!(after.loras[0].key, before.loras[0].key, "{what:?}");
            assert_ne!(
                after.sprites[0].frames, before.sprites[0].frames,
                "{what:?}"
            );
            assert_eq!(
                after.sprites[1].frames, before.sprites[1].frames,
                "{what:?}"
            );
            assert_eq!(
                after.loras[0].inputs.changes_since(&before.loras[0].inputs),
                what
            );
        };
        std::fs::write(art.join("a.png"), b"a2").unwrap();
        changed(&run(text), &["image a.png changed"]);
        std::fs::write(art.join("a.png"), b"a").unwrap();
        std::fs::write(art.join("a.txt"), "a knight").unwrap();
        changed(&run(text), &["image a.png changed"]);
        std::fs::remove_file(art.join("a.txt")).unwrap();
        std::fs::write(art.join("c.png"), b"c").unwrap();
        changed(&run(text), &["image c.png added"]);
        std::fs::remove_file(art.join("c.png")).unwrap();
        changed(
            &run(&text.replace("rank: 4", "rank: 8")),
            &["training settings changed"],
        );
        changed(
            &run(&text.replace("model: \"m\"", "model: \"n\"")),
            &["base model changed"],
        );
        // Back as it was: the same keys.
        let again = run(text);
        assert_eq!(again.loras[0].key, before.loras[0].key);
        assert_eq!(again.sprites[0].frames, before.sprites[0].frames);
        // The weight changes the sprite, not the LoRA.
        let weighted = run(&text.replace("0.5", "0.6"));
        assert_eq!(weighted.loras[0].key, before.loras[0].key);
        assert_ne!(weighted.sprites[0].frames, before.sprites[0].frames);
    }

    /// A model folder's file that is a FIFO (or a device) is refused, not read forever.
    #[cfg(unix)]
    #[test]
    fn hashing_refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("diffusion_pytorch_model.safetensors");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut hasher = FileHasher::in_memory();
        let error = hasher.hash(&fifo).unwrap_err().to_string();
        assert!(error.contains("named pipe"), "{error}");
        let error = hasher.hash(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(error.contains("character device"), "{error}");
    }

    #[test]
    fn stamp_cache_skips_rereading_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.bin");
        std::fs::write(&file, b"content").unwrap();
        let state = dir.path().join("stamps.json");
        let mut hasher = FileHasher::persistent(state.clone());
        let first = hasher.hash(&file).unwrap();
        hasher.save();
        // A stamp that matches (size, mtime) is trusted: prove it by planting a false hash.
        let mut planted: Vec<(PathBuf, Stamp)> =
            serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        planted[0].1.hash = [7; 32];
        std::fs::write(&state, serde_json::to_vec(&planted).unwrap()).unwrap();
        let mut again = FileHasher::persistent(state.clone());
        assert_eq!(again.hash(&file).unwrap().as_bytes(), &[7; 32]);
        // Changing the file (size differs) forces a re-read.
        std::fs::write(&file, b"other content").unwrap();
        let changed = again.hash(&file).unwrap();
        assert_ne!(changed, first);
        assert_eq!(changed, blake3::hash(b"other content"));
    }

    #[test]
    fn large_files_are_hashed_once_across_build_folders() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("unet.safetensors");
        std::fs::write(&weights, vec![3u8; 4096]).unwrap();
        let small = dir.path().join("config.json");
        std::fs::write(&small, b"{}").unwrap();
        let shared = dir.path().join("cache/.pixelgen-stamps.json");
        std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
        let hasher_for = |local: &str| {
            let mut h = FileHasher::persistent(dir.path().join(local));
            h.share_large_files(shared.clone(), 1024);
            h
        };
        let mut first = hasher_for("out-a.json");
        let hash = first.hash(&weights).unwrap();
        first.hash(&small).unwrap();
        assert_eq!(first.files_read(), 2);
        first.save();
        // Another build folder (another crate, or the CLI): the weights come from the
        // shared store; the small file is its own business.
        let mut second = hasher_for("out-b.json");
        assert_eq!(second.hash(&weights).unwrap(), hash);
        assert_eq!(second.files_read(), 0);
        second.hash(&small).unwrap();
        assert_eq!(second.files_read(), 1);
        // A changed file is read again, and the store learns its new stamp.
        std::fs::write(&weights, vec![4u8; 8192]).unwrap();
        let mut third = hasher_for("out-c.json");
        assert_eq!(
            third.hash(&weights).unwrap(),
            blake3::hash(&vec![4u8; 8192])
        );
        assert_eq!(third.files_read(), 1);
        third.save();
        let mut fourth = hasher_for("out-d.json");
        fourth.hash(&weights).unwrap();
        assert_eq!(fourth.files_read(), 0);
    }

    #[test]
    fn large_files_hash_the_same_through_the_parallel_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.bin");
        let bytes: Vec<u8> = (0..(PARALLEL_HASH_MIN_SIZE + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(
            FileHasher::in_memory().hash(&file).unwrap(),
            blake3::hash(&bytes)
        );
    }
}
