//! The key group of a sprite's conditioning (`init`, `controlnet`, `tiling`): the bytes of
//! every image it names, each ControlNet folder's files as one identity, and every
//! setting. Only conditioned sprites have the group, so other keys are as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{InputFiles, PlanError};
use crate::diagnostics::{Diagnostic, SourceFile};
use crate::generate::conditioning::ImageFile;
use crate::key::{Canonical, InputFile};
use crate::manifest::SpriteSpec;

/// The conditioning group: every image's bytes, the ControlNets' files, and every
/// setting; each file recorded in `files` for the lock file.
pub(super) fn group(
    source_file: &SourceFile,
    sprite: &SpriteSpec,
    input_files: &mut InputFiles<'_>,
    files: &mut BTreeMap<InputFile, String>,
) -> Result<Canonical, PlanError> {
    let unreadable = |path: &Path, source: std::io::Error| {
        PlanError::InputUnreadable(Box::new(
            Diagnostic::new(
                source_file,
                sprite.span.clone(),
                format!(
                    "sprite `{}`: cannot read {}: {source}",
                    sprite.name,
                    path.display()
                ),
            )
            .help("image paths are relative to the folder of sprites.ron; offline builds also accept a missing file whose hash is in sprites.lock"),
        ))
    };
    let image_hash = |input_files: &mut InputFiles<'_>,
                      image: &ImageFile,
                      files: &mut BTreeMap<InputFile, String>| {
        let file = InputFile::Image(image.path.clone());
        let hash = input_files
            .hash_file(file.clone(), &image.resolved)
            .map_err(|e| unreadable(&image.resolved, e))?;
        files.insert(file, hash.to_hex().to_string());
        Ok::<_, PlanError>(hash)
    };
    let conditioning = &sprite.conditioning;
    let mut group = Canonical::new();
    match &conditioning.init {
        Some(init) => {
            group
                .str("init")
                .bytes(image_hash(input_files, &init.image, files)?.as_bytes())
                .f64(init.strength);
            match &init.mask {
                Some(mask) => group
                    .str("mask")
                    .bytes(image_hash(input_files, mask, files)?.as_bytes()),
                None => group.str("no-mask"),
            };
        }
        None => {
            group.str("no-init");
        }
    }
    group.str(conditioning.tiling.map_or("no-tiling", |t| t.name()));
    group.u64(conditioning.controlnets.len() as u64);
    for controlnet in &conditioning.controlnets {
        let image = image_hash(input_files, &controlnet.image, files)?;
        let identity = input_files.folder_hash(
            InputFile::ControlNet(controlnet.model.clone()),
            &controlnet.resolved,
        );
        files.insert(
            InputFile::ControlNet(controlnet.model.clone()),
            identity.to_hex().to_string(),
        );
        group
            .bytes(identity.as_bytes())
            .bytes(image.as_bytes())
            .f64(controlnet.scale)
            .f64(controlnet.start)
            .f64(controlnet.end);
    }
    Ok(group)
}

impl InputFiles<'_> {
    /// A folder's identity (a ControlNet's): the content of its `.json` and
    /// `.safetensors` files, by name. Absent, the lock file's; with neither, an identity
    /// that matches no cache entry, so the sprite is stale and drawing it says why.
    fn folder_hash(&mut self, file: InputFile, folder: &Path) -> blake3::Hash {
        let mut names: Vec<PathBuf> = std::fs::read_dir(folder)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension()
                            .is_some_and(|x| x == "json" || x == "safetensors")
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let (identity, complete) =
            self.files_identity("pixelgen folder identity v1", folder, &names);
        match (complete && !names.is_empty(), self.known.known_hash(&file)) {
            (true, _) => identity,
            (false, Some(known)) => known,
            (false, None) => {
                blake3::hash(format!("pixelgen unresolved {}", file.lock_key()).as_bytes())
            }
        }
    }
}
