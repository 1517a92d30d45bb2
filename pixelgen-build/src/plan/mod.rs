//! Validated specs → one content key per sprite frame.
//!
//! A key is a blake3 hash of everything that determines a frame's pixels. The inputs
//! are hashed in named groups (prompt, seed, LoRAs, …) so that a stale sprite can say
//! which group changed; the lock file keeps each group's short hash for that purpose.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::diagnostics::{Diagnostic, SourceFile};
use crate::generate::diffusion::model_files;
use crate::generate::{KeyInputs, ResolvedLora};
use crate::identity::{FrameId, LoraName, SpriteName};
use crate::key::{Canonical, FileHasher, InputFile, InputGroup, InputHashes, Key, KnownFileHashes};
use crate::manifest::{
    AtlasSpec, Background, LoraSource, Manifest, SpriteSpec, TrainedLoraSpec, TrainingSettings,
};
use crate::train::{TRAINING_VERSION, TrainingImage};

/// Bumped whenever a change to pixelgen changes the pixels it makes for the same inputs,
/// so that caches made by an older pipeline are regenerated rather than trusted.
pub const PIPELINE_VERSION: &str = "pixelgen-pipeline-1";

/// The plan stage's value: the manifest it consumed, with every sprite's and every trained
/// LoRA's keys. Each entry carries its spec, so nothing downstream joins arrays by index.
///
/// Invariant: `sprites` and `loras` keep the manifest's order (sorted by name), and every
/// entry's keys are those of its spec under the inputs the plan was made with
/// ([`Plan::rekey`] keeps that true when an outside input turns out different).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The manifest file, for diagnostics.
    pub source: SourceFile,
    /// Sorted by name.
    pub atlases: Vec<AtlasSpec>,
    /// Sorted by name.
    pub sprites: Vec<PlannedSprite>,
    /// The trained LoRAs, sorted by name.
    pub loras: Vec<PlannedLora>,
    /// Files the manifest read itself (palette files), for rerun-if-changed.
    pub input_files: Vec<PathBuf>,
}

impl Plan {
    /// The sprite named `name`.
    pub fn sprite(&self, name: &str) -> Option<&PlannedSprite> {
        self.sprites
            .iter()
            .find(|planned| planned.spec.name == name)
    }

    /// The trained LoRA named `name`.
    pub fn lora(&self, name: &LoraName) -> Option<&PlannedLora> {
        self.loras.iter().find(|planned| planned.spec.name == *name)
    }

    /// The sprites' specs, in order.
    pub fn specs(&self) -> impl Iterator<Item = &SpriteSpec> {
        self.sprites.iter().map(|planned| &planned.spec)
    }

    /// The files and folders the sprites' LoRAs are read from: LoRA files and trained
    /// LoRAs' image folders (for rerun-if-changed and `watch`).
    pub fn lora_inputs(&self) -> BTreeSet<&Path> {
        crate::manifest::lora_inputs(self.specs(), self.loras.iter().map(|t| &t.spec))
    }

    /// The local models (as the manifest names them) that sprites are drawn and LoRAs
    /// trained with.
    pub fn local_models(&self) -> BTreeSet<&str> {
        self.specs()
            .filter_map(|s| s.generator.backend().local_model())
            .chain(self.loras.iter().map(|t| t.spec.model.as_str()))
            .collect()
    }

    /// The sprites that use the trained LoRA `name`.
    pub fn users_of(&self, name: &LoraName) -> Vec<SpriteName> {
        self.specs()
            .filter(|spec| {
                spec.loras
                    .iter()
                    .any(|l| l.source == LoraSource::Trained(name.clone()))
            })
            .map(|spec| spec.name.clone())
            .collect()
    }
}

/// The plan for one sprite: its spec, its input groups and one planned frame per frame.
#[derive(Debug, Clone)]
pub struct PlannedSprite {
    pub spec: SpriteSpec,
    pub inputs: InputHashes,
    /// In frame order: `frames[n].id.frame == n`.
    pub frames: Vec<PlannedFrame>,
    /// Content hash (hex) of each input file: LoRAs and the model (a trained LoRA's key).
    pub files: BTreeMap<InputFile, String>,
    /// The sprite's LoRAs as files to load, in manifest order.
    pub loras: Vec<ResolvedLora>,
}

/// The plan for one trained LoRA: its key over the images, captions, base model and
/// settings, and where the trained file lives in the cache.
#[derive(Debug, Clone)]
pub struct PlannedLora {
    pub spec: TrainedLoraSpec,
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

/// What planning reads besides the manifest.
pub struct PlanInputs<'a> {
    pub hasher: &'a mut FileHasher,
    /// Hashes recorded elsewhere (the lock file, what image servers reported), for files
    /// this machine cannot read.
    pub known: &'a dyn KnownFileHashes,
    /// Offline builds: LoRA files may be absent (their hashes then come from `known`).
    pub allow_missing_files: bool,
    /// Where models named by Hugging Face id are looked up.
    pub hub_cache: Option<&'a Path>,
    /// Where trained LoRAs live.
    pub cache: &'a Cache,
}

/// Outside inputs that turned out different from what a plan was made with.
#[derive(Debug, Default)]
pub struct Changed {
    /// Models (as the manifest names them) that are on this machine now (downloaded).
    pub models: BTreeSet<String>,
    /// Input files whose identity is known now (an image server reported its model).
    pub files: BTreeSet<InputFile>,
}

/// Computes the key of every trained LoRA and of every frame of every sprite, consuming
/// the manifest. Models named by Hugging Face id are looked up in `hub_cache`; trained
/// LoRAs live in `cache`.
pub fn plan(manifest: Manifest, inputs: PlanInputs<'_>) -> Result<Plan, PlanError> {
    let Manifest {
        source,
        atlases,
        sprites,
        trained_loras,
        input_files,
    } = manifest;
    let mut files = InputFiles::new(inputs, &source);
    let loras = trained_loras
        .into_iter()
        .map(|lora| plan_lora(&source, lora, &mut files))
        .collect::<Result<Vec<_>, _>>()?;
    let sprites = sprites
        .into_iter()
        .map(|sprite| plan_sprite(&source, sprite, &mut files, &loras))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        source,
        atlases,
        sprites,
        loras,
        input_files,
    })
}

impl Plan {
    /// Keys again the entries that `changed` concerns — trained LoRAs and sprites on a
    /// model downloaded now, sprites with a file whose identity is known now, and sprites
    /// on a LoRA keyed again — and leaves the others as they are. Returns how many
    /// entries were keyed again.
    pub fn rekey(&mut self, inputs: PlanInputs<'_>, changed: &Changed) -> Result<usize, PlanError> {
        let mut files = InputFiles::new(inputs, &self.source);
        let mut rekeyed_loras = BTreeSet::new();
        for lora in &mut self.loras {
            if changed.models.contains(&lora.spec.model) {
                *lora = plan_lora(&self.source, lora.spec.clone(), &mut files)?;
                rekeyed_loras.insert(lora.spec.name.clone());
            }
        }
        let mut count = rekeyed_loras.len();
        for sprite in &mut self.sprites {
            let affected = sprite
                .spec
                .generator
                .backend()
                .local_model()
                .is_some_and(|model| changed.models.contains(model))
                || sprite.files.keys().any(|file| changed.files.contains(file))
                || sprite
                    .loras
                    .iter()
                    .filter_map(|lora| lora.trained.as_ref())
                    .any(|name| rekeyed_loras.contains(name));
            if affected {
                *sprite = plan_sprite(&self.source, sprite.spec.clone(), &mut files, &self.loras)?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// A trained LoRA's key: the training code's version, the base model's identity, every
/// setting, and each image's name, bytes and caption (sorted by name).
fn plan_lora(
    source_file: &SourceFile,
    lora: TrainedLoraSpec,
    input_files: &mut InputFiles<'_>,
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
    let settings = blake3::hash(settings_group(&lora.settings).as_bytes());
    all.update(settings.as_bytes());
    inputs.settings = settings.to_hex()[..16].to_string();
    for image in &images {
        let bytes = input_files
            .hasher
            .hash(&image.path)
            .map_err(|e| unreadable(format!("cannot read {}: {e}", image.path.display())))?;
        let hash = blake3::hash(
            Canonical::new()
                .bytes(bytes.as_bytes())
                .str(&image.caption)
                .take()
                .as_bytes(),
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
        file: input_files.cache.lora_path_of(&key),
        key,
        images,
        inputs,
        files: BTreeMap::from([(
            InputFile::Model(lora.model.clone()),
            model.to_hex().to_string(),
        )]),
        spec: lora,
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
    cache: &'a Cache,
    memo: HashMap<PathBuf, blake3::Hash>,
    /// Identity of each model named in the manifest.
    models: HashMap<String, blake3::Hash>,
    manifest_dir: PathBuf,
}

impl<'a> InputFiles<'a> {
    fn new(inputs: PlanInputs<'a>, source: &SourceFile) -> InputFiles<'a> {
        InputFiles {
            hasher: inputs.hasher,
            known: inputs.known,
            allow_missing_files: inputs.allow_missing_files,
            hub_cache: inputs.hub_cache,
            cache: inputs.cache,
            memo: HashMap::new(),
            models: HashMap::new(),
            manifest_dir: source
                .path()
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
    }

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

    /// A Diffusion model's identity: the content of its weight, config and tokenizer
    /// files (hashed once, then remembered by stamp). A model that is not on this machine
    /// takes the identity recorded in the lock file, so teammates and CI without the model
    /// still find their cached sprites fresh; with neither, an identity that matches no
    /// cache entry, so the sprite is stale and generating it says the model is missing.
    fn model_hash(&mut self, model: &str) -> blake3::Hash {
        if let Some(hash) = self.models.get(model) {
            return *hash;
        }
        let located = model_files::locate(model, &self.manifest_dir, self.hub_cache);
        let hash = match located {
            Ok(location) => {
                let (identity, complete) = self.files_identity(
                    "pixelgen model identity v1",
                    location.path(),
                    &location.content_files(),
                );
                match (
                    complete,
                    self.known.known_hash(&InputFile::Model(model.to_string())),
                ) {
                    (false, Some(known)) => known,
                    _ => identity,
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

impl InputFiles<'_> {
    /// The identity of `files` under `root`: each file's path relative to `root` and its
    /// content hash, under the blake3 derive key `context`; and whether every file could
    /// be read.
    fn files_identity(
        &mut self,
        context: &str,
        root: &Path,
        files: &[PathBuf],
    ) -> (blake3::Hash, bool) {
        let mut all = blake3::Hasher::new_derive_key(context);
        let mut complete = true;
        for file in files {
            let relative = file
                .strip_prefix(root)
                .unwrap_or(file)
                .to_string_lossy()
                .replace('\\', "/");
            match self.hasher.hash(file) {
                Ok(hash) => {
                    all.update(relative.as_bytes())
                        .update(&[0])
                        .update(hash.as_bytes());
                }
                Err(_) => complete = false,
            }
        }
        (all.finalize(), complete)
    }
}

impl KeyInputs for InputFiles<'_> {
    fn model_identity(&mut self, model: &str) -> blake3::Hash {
        self.model_hash(model)
    }

    fn file_hash(&mut self, file: InputFile, path: &Path) -> std::io::Result<blake3::Hash> {
        self.hash_file(file, path)
    }

    fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash> {
        self.known.known_hash(file)
    }
}

fn plan_sprite(
    source_file: &SourceFile,
    sprite: SpriteSpec,
    input_files: &mut InputFiles<'_>,
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
                    content_hash: Some(hash.to_hex().to_string()),
                });
            }
            LoraSource::Trained(name) => {
                // The manifest checked that every name is declared.
                let Some(planned) = trained.iter().find(|lora| lora.spec.name == *name) else {
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
                    // Known once it is trained (the pipeline looks it up in the cache).
                    content_hash: None,
                });
            }
        }
    }

    let backend_key = sprite
        .generator
        .backend()
        .key(input_files)
        .map_err(|error| {
            PlanError::InputUnreadable(Box::new(
                Diagnostic::new(
                    source_file,
                    sprite.span.clone(),
                    format!("sprite `{}`: {}", sprite.name, error.message),
                )
                .help(error.help),
            ))
        })?;
    for (file, hash) in &backend_key.files {
        files.insert(file.clone(), hash.to_hex().to_string());
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
        (InputGroup::Generator, backend_key.generator),
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
    // Only conditioned sprites have the group (other keys stay as they were).
    if !sprite.conditioning.is_empty() {
        let group = conditioning::group(source_file, &sprite, input_files, &mut files)?;
        groups.push((InputGroup::Conditioning, group));
    }
    // Only sprites whose backend has a model have the group (procedural keys stay as
    // they were).
    if let Some(identity) = backend_key.model {
        groups.push((
            InputGroup::Model,
            Canonical::new().bytes(identity.as_bytes()).take(),
        ));
    }
    groups.sort_by_key(|(group, _)| *group);

    let mut all = blake3::Hasher::new_derive_key("pixelgen sprite frame key v1");
    let mut inputs = InputHashes::new();
    for (name, group) in &groups {
        let hash = blake3::hash(group.as_bytes());
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
                    .update(blake3::hash(group.as_bytes()).as_bytes());
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
        spec: sprite,
        inputs,
        frames,
        files,
        loras: resolved_loras,
    })
}

fn background_group(background: Background) -> Canonical {
    match background {
        Background::Transparent => Canonical::new().str("transparent").take(),
        Background::Keep => Canonical::new().str("keep").take(),
        Background::Color(rgb) => Canonical::new().str("color").bytes(&rgb).take(),
    }
}

mod conditioning;
#[cfg(test)]
mod tests;
