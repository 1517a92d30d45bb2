//! Cached frames → packed atlas PNGs and the index, in OUT_DIR. Skipped when the
//! index there was made from the same inputs (the no-op build).

use std::path::Path;

use image::RgbaImage;

use crate::Error;
use crate::atlas;
use crate::cache::{encode_png, write_atomically};
use crate::index::{INDEX_VERSION, Index, IndexedAtlas, IndexedSprite, OUT_SUBDIR};
use crate::pipeline::Session;

/// Writes `OUT_DIR/pixelgen/{index.json, <atlas>.png}` for the session's sprites,
/// which must all be in the cache (after `Session::realize`).
pub fn emit(session: &Session, out_dir: &Path) -> Result<Index, Error> {
    let dir = out_dir.join(OUT_SUBDIR);
    let stamp = stamp(session);
    let index_path = Index::path_in(out_dir);
    if let Ok(existing) = Index::read(&index_path)
        && existing.stamp == stamp
        && existing.atlases.iter().all(|a| a.image.is_file())
    {
        return Ok(existing);
    }

    let mut atlases = Vec::new();
    for atlas_spec in &session.manifest.atlases {
        // Layout order: sprites by name, then frames: independent of manifest order.
        let mut frames: Vec<(String, RgbaImage)> = Vec::new();
        let mut sprites = Vec::new();
        for (sprite, planned) in session
            .sprites_with_keys()
            .filter(|(s, _)| s.atlas == atlas_spec.name)
        {
            let first = frames.len();
            for (frame, key) in planned.frames.iter().enumerate() {
                let image = session.cache().read(key).map_err(|e| Error::Cache {
                    path: session.cache().path_of(key),
                    source: std::io::Error::other(e),
                })?;
                frames.push((format!("{}#{frame}", sprite.name), image));
            }
            sprites.push(IndexedSprite {
                name: sprite.name.clone(),
                constant: sprite.constant.clone(),
                frames: (first..frames.len()).collect(),
                animated: sprite.frames > 1,
            });
        }
        let inputs: Vec<(&str, &RgbaImage)> = frames.iter().map(|(n, i)| (n.as_str(), i)).collect();
        let packed = atlas::pack(&inputs, &atlas_spec.options).map_err(|source| Error::Atlas {
            atlas: atlas_spec.name.clone(),
            source,
        })?;
        let image_path = dir.join(format!("{}.png", atlas_spec.module));
        let bytes = encode_png(&packed.image).map_err(|source| Error::Cache {
            path: image_path.clone(),
            source,
        })?;
        write_atomically(&image_path, &bytes).map_err(|source| Error::Cache {
            path: image_path.clone(),
            source,
        })?;
        atlases.push(IndexedAtlas {
            name: atlas_spec.name.clone(),
            module: atlas_spec.module.clone(),
            image: image_path,
            width: packed.image.width(),
            height: packed.image.height(),
            rects: packed
                .placements
                .iter()
                .map(|p| [p.x, p.y, p.width, p.height])
                .collect(),
            sprites,
        });
    }
    let index = Index {
        version: INDEX_VERSION,
        stamp,
        atlases,
    };
    write_atomically(&index_path, crate::index::to_json(&index).as_bytes()).map_err(|source| {
        Error::Cache {
            path: index_path,
            source,
        }
    })?;
    Ok(index)
}

/// Hash of everything the atlases depend on: atlas options, sprite names, atlases and
/// frame keys (keys determine pixels), and this pipeline's version.
fn stamp(session: &Session) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("pixelgen atlas stamp v1");
    hasher.update(crate::plan::PIPELINE_VERSION.as_bytes());
    for atlas in &session.manifest.atlases {
        hasher.update(format!("{atlas:?}").as_bytes());
    }
    for (sprite, planned) in session.sprites_with_keys() {
        hasher.update(
            format!(
                "{}|{}|{}|{}",
                sprite.name, sprite.constant, sprite.atlas, sprite.frames
            )
            .as_bytes(),
        );
        for key in &planned.frames {
            hasher.update(&key.0);
        }
        // Outputs too: a frame regenerated under the same key may differ (GPU nondeterminism).
        if let Some(locked) = session.lock.sprites.get(&sprite.name) {
            for output in &locked.outputs {
                hasher.update(output.as_bytes());
            }
        }
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{MANIFEST_FILE, Project, Quiet};
    use crate::plan::FileHasher;

    fn build(dir: &Path, manifest: &str) -> Result<Index, Error> {
        std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
        let project = Project::for_crate(dir, Some(dir.join("cache")), None).unwrap();
        let mut session = Session::open(project, FileHasher::in_memory(), false)?;
        session.realize(false, &mut Quiet)?;
        emit(&session, &dir.join("out"))
    }

    const MANIFEST: &str = r#"(atlases: { "chars": (), "items": (padding: 2) }, sprites: {
        "b": (prompt: "bat", atlas: "chars", frames: 2, size: (16, 16)),
        "a": (prompt: "knight", atlas: "chars", size: (16, 24)),
        "p": (prompt: "potion", atlas: "items", size: (8, 8)),
    })"#;

    #[test]
    fn writes_atlases_and_an_index_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let index = build(dir.path(), MANIFEST).unwrap();
        assert_eq!(index.atlases.len(), 2);
        let chars = &index.atlases[0];
        assert_eq!(chars.name, "chars");
        let names: Vec<&str> = chars.sprites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(chars.sprites[0].frames, [0]);
        assert_eq!(chars.sprites[1].frames, [1, 2]);
        assert!(chars.sprites[1].animated);
        assert_eq!(chars.rects[0][2..], [16, 24]);
        let png = image::open(&chars.image).unwrap();
        assert_eq!((png.width(), png.height()), (chars.width, chars.height));
        assert_eq!(
            Index::read(&Index::path_in(&dir.path().join("out"))).unwrap(),
            index
        );
    }

    #[test]
    fn reordering_the_manifest_changes_nothing() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let reordered = r#"(sprites: {
            "p": (prompt: "potion", atlas: "items", size: (8, 8)),
            "a": (prompt: "knight", atlas: "chars", size: (16, 24)),
            "b": (prompt: "bat", atlas: "chars", frames: 2, size: (16, 16)),
        }, atlases: { "items": (padding: 2), "chars": () })"#;
        let first = build(one.path(), MANIFEST).unwrap();
        let second = build(two.path(), reordered).unwrap();
        for (a, b) in first.atlases.iter().zip(&second.atlases) {
            assert_eq!((&a.rects, &a.sprites), (&b.rects, &b.sprites));
            assert_eq!(
                std::fs::read(&a.image).unwrap(),
                std::fs::read(&b.image).unwrap()
            );
        }
        assert_eq!(first.stamp, second.stamp);
    }

    #[test]
    fn sprites_that_do_not_fit_name_the_atlas_and_sprite() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = r#"(atlases: { "tiny": (max_size: (20, 20)) }, sprites: { "big": (prompt: "tree", atlas: "tiny", size: (32, 32)) })"#;
        let error = build(dir.path(), manifest).unwrap_err().to_string();
        assert!(error.contains("tiny") && error.contains("big"), "{error}");
    }
}
