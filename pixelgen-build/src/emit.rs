//! Cached frames → packed atlas PNGs and the index, in OUT_DIR (or the live folder).
//! Skipped when the index there was made from the same inputs (the no-op build);
//! `publish` copies what was written to the live folder without packing again.

use std::path::{Path, PathBuf};

use image::RgbaImage;

use crate::atlas;
use crate::cache::{encode_png, write_atomically};
use crate::error::Error;
use crate::generate::conditioning::Tiling;
use crate::identity::FrameId;
use crate::index::{INDEX_VERSION, Index, IndexedAtlas, IndexedPage, IndexedSprite, OUT_SUBDIR};
use crate::pipeline::Session;

/// Writes `OUT_DIR/pixelgen/{index.json, <atlas>.png}` for the session's sprites,
/// which must all be in the cache (after `Session::realize`).
pub fn emit(session: &Session, out_dir: &Path) -> Result<Index, Error> {
    let dir = out_dir.join(OUT_SUBDIR);
    let stamp = stamp(session);
    let index_path = Index::path_in(out_dir);
    let live_index = Some(Index::path_in(&session.project.live_dir()));
    if let Some(existing) = current(&index_path, &stamp, &live_index) {
        return Ok(existing);
    }

    let mut atlases = Vec::new();
    for atlas_spec in &session.plan.atlases {
        // Sprites by name, then frames: independent of manifest order.
        let mut frames: Vec<(&FrameId, RgbaImage, Option<Tiling>)> = Vec::new();
        let mut sprites = Vec::new();
        for planned in session
            .plan
            .sprites
            .iter()
            .filter(|planned| planned.spec.atlas == atlas_spec.name)
        {
            let sprite = &planned.spec;
            for frame in &planned.frames {
                let image = session.cache().read(&frame.key).map_err(|e| Error::Cache {
                    path: session.cache().path_of(&frame.key),
                    source: std::io::Error::other(e),
                })?;
                frames.push((&frame.id, image, sprite.conditioning.tiling));
            }
            sprites.push((sprite, planned.frames.len()));
        }
        let sources: Vec<atlas::Source<'_>> = frames
            .iter()
            .map(|(id, image, tiling)| atlas::Source {
                id,
                image,
                tiling: *tiling,
            })
            .collect();
        let packed = atlas::pack(&sources, &atlas_spec.options).map_err(|source| Error::Atlas {
            atlas: atlas_spec.name.clone(),
            source,
        })?;
        let mut pages: Vec<IndexedPage> = Vec::new();
        for (p, image) in packed.pages.iter().enumerate() {
            let file = match p {
                0 => format!("{}.png", atlas_spec.module),
                _ => format!("{}-{p}.png", atlas_spec.module),
            };
            let image_path = dir.join(file);
            let bytes = encode_png(image).map_err(|source| Error::Cache {
                path: image_path.clone(),
                source,
            })?;
            write_atomically(&image_path, &bytes).map_err(|source| Error::Cache {
                path: image_path.clone(),
                source,
            })?;
            pages.push(IndexedPage {
                image: image_path,
                width: image.width(),
                height: image.height(),
                rects: Vec::new(),
                trims: Vec::new(),
            });
        }
        // Layout indices per page: sprites in name order, each one's frames
        // contiguous on the page that holds them all.
        let mut next_frame = 0;
        let mut indexed = Vec::new();
        for (sprite, count) in sprites {
            let packed_frames = &packed.frames[next_frame..next_frame + count];
            next_frame += count;
            let page_index = packed_frames.first().map_or(0, |f| f.page);
            let page = &mut pages[page_index];
            let first = page.rects.len();
            for f in packed_frames {
                debug_assert_eq!(f.page, page_index, "a sprite's frames share a page");
                page.rects
                    .push([f.rect.x, f.rect.y, f.rect.width, f.rect.height]);
                page.trims.push([
                    f.trim.x,
                    f.trim.y,
                    f.trim.source_width,
                    f.trim.source_height,
                ]);
            }
            indexed.push(IndexedSprite {
                name: sprite.name.to_string(),
                constant: sprite.constant.clone(),
                page: page_index,
                frames: (first..first + count).collect(),
                animated: sprite.animated,
            });
        }
        atlases.push(IndexedAtlas {
            name: atlas_spec.name.to_string(),
            module: atlas_spec.module.clone(),
            pages,
            sprites: indexed,
        });
    }
    let index = Index {
        version: INDEX_VERSION,
        stamp,
        atlases,
        live_index,
    };
    write_atomically(&index_path, crate::index::to_json(&index).as_bytes()).map_err(|source| {
        Error::Cache {
            path: index_path,
            source,
        }
    })?;
    Ok(index)
}

/// The index at `index_path` when it was made from `stamp` and its pages are all there.
/// The index at `index_path` when it is what emit would write: the same stamp, the same
/// live folder named (a moved crate publishes elsewhere), and every page there.
fn current(index_path: &Path, stamp: &str, live_index: &Option<PathBuf>) -> Option<Index> {
    Index::read(index_path).ok().filter(|existing| {
        existing.stamp == stamp
            && existing.live_index == *live_index
            && existing
                .atlases
                .iter()
                .flat_map(|a| &a.pages)
                .all(|p| p.image.is_file())
    })
}

/// Copies the atlases `emit` wrote (`index` and its pages) to `dir`, with the index
/// naming the copies: how a build publishes them to the live folder without packing
/// twice. Skipped when `dir` already holds them.
pub fn publish(index: &Index, dir: &Path) -> Result<(), Error> {
    let index_path = Index::path_in(dir);
    if current(&index_path, &index.stamp, &index.live_index).is_some() {
        return Ok(());
    }
    let pages_dir = dir.join(OUT_SUBDIR);
    let mut published = index.clone();
    for page in published.atlases.iter_mut().flat_map(|a| &mut a.pages) {
        let copy = pages_dir.join(page.image.file_name().unwrap_or_default());
        let bytes = std::fs::read(&page.image).map_err(|source| Error::Cache {
            path: page.image.clone(),
            source,
        })?;
        write_atomically(&copy, &bytes).map_err(|source| Error::Cache {
            path: copy.clone(),
            source,
        })?;
        page.image = copy;
    }
    write_atomically(&index_path, crate::index::to_json(&published).as_bytes()).map_err(|source| {
        Error::Cache {
            path: index_path,
            source,
        }
    })
}

/// Hash of everything the atlases depend on: atlas options, sprite names, atlases and
/// frame keys (keys determine pixels), and this pipeline's version.
fn stamp(session: &Session) -> String {
    // v2: indexes name their live folder (v1 ones, which did not, are written again).
    let mut hasher = blake3::Hasher::new_derive_key("pixelgen atlas stamp v2");
    hasher.update(crate::plan::PIPELINE_VERSION.as_bytes());
    for atlas in &session.plan.atlases {
        let o = &atlas.options;
        hasher.update(
            format!(
                "{}|{}|{}|{}|{}x{}|{}|{}\n",
                atlas.name,
                atlas.module,
                o.padding,
                o.extrude,
                o.max_width,
                o.max_height,
                o.power_of_two,
                o.trim
            )
            .as_bytes(),
        );
    }
    for planned in &session.plan.sprites {
        let sprite = &planned.spec;
        hasher.update(
            format!(
                "{}|{}|{}|{}",
                sprite.name, sprite.constant, sprite.atlas, sprite.frames
            )
            .as_bytes(),
        );
        for frame in &planned.frames {
            hasher.update(&frame.key.0);
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
    use crate::key::FileHasher;
    use crate::pipeline::{MANIFEST_FILE, Project, Quiet};

    fn build(dir: &Path, manifest: &str) -> Result<Index, Error> {
        std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
        let project = Project::for_crate(dir, Some(dir.join("cache")), None).unwrap();
        let mut session = Session::open(
            project,
            FileHasher::in_memory(),
            &crate::environment::Environment::default(),
            false,
        )?;
        session.realize(false, &mut Quiet)?;
        emit(&session, &dir.join("out"))
    }

    const MANIFEST: &str = r#"(atlases: { "chars": (), "items": (padding: 2) }, sprites: {
        "b": (prompt: "bat", atlas: "chars", frames: 2, size: (16, 16)),
        "a": (prompt: "knight", atlas: "chars", size: (16, 24)),
        "p": (prompt: "potion", atlas: "items", size: (8, 8)),
    })"#;

    #[test]
    fn publishing_copies_the_pages_and_names_the_copies() {
        let dir = tempfile::tempdir().unwrap();
        let index = build(dir.path(), MANIFEST).unwrap();
        let live = dir.path().join("live");
        publish(&index, &live).unwrap();
        let published = Index::read(&Index::path_in(&live)).unwrap();
        assert_eq!(published.stamp, index.stamp);
        let pages = |i: &Index| -> Vec<IndexedPage> {
            i.atlases.iter().flat_map(|a| a.pages.clone()).collect()
        };
        for (original, copy) in pages(&index).iter().zip(pages(&published)) {
            assert!(copy.image.starts_with(&live), "{}", copy.image.display());
            assert_eq!(
                std::fs::read(&copy.image).unwrap(),
                std::fs::read(&original.image).unwrap()
            );
            assert_eq!(
                (copy.rects.clone(), copy.trims.clone()),
                (original.rects.clone(), original.trims.clone())
            );
        }
        // Up to date: nothing is written again.
        let written = std::fs::metadata(Index::path_in(&live))
            .unwrap()
            .modified()
            .unwrap();
        publish(&index, &live).unwrap();
        let again = std::fs::metadata(Index::path_in(&live))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(written, again);
    }

    #[test]
    fn a_sprite_declared_with_one_frame_is_still_an_animation() {
        let dir = tempfile::tempdir().unwrap();
        let index = build(
            dir.path(),
            r#"(sprites: { "torch": (prompt: "torch", frames: 1, size: (8, 8)) })"#,
        )
        .unwrap();
        let torch = &index.atlases[0].sprites[0];
        assert_eq!((torch.frames.len(), torch.animated), (1, true));
    }

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
        assert!(!chars.sprites[0].animated, "no `frames:`, a still sprite");
        assert_eq!(chars.pages.len(), 1);
        let page = &chars.pages[0];
        // The knight's trimmed rect lies inside its untrimmed 16x24 frame.
        let ([_, _, w, h], [x, y, fw, fh]) = (page.rects[0], page.trims[0]);
        assert_eq!((fw, fh), (16, 24));
        assert!(x + w <= 16 && y + h <= 24 && w > 0 && h > 0);
        let png = image::open(&page.image).unwrap();
        assert_eq!((png.width(), png.height()), (page.width, page.height));
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
            assert_eq!(a.sprites, b.sprites);
            for (pa, pb) in a.pages.iter().zip(&b.pages) {
                assert_eq!((&pa.rects, &pa.trims), (&pb.rects, &pb.trims));
                assert_eq!(
                    std::fs::read(&pa.image).unwrap(),
                    std::fs::read(&pb.image).unwrap()
                );
            }
        }
        assert_eq!(first.stamp, second.stamp);
    }

    #[test]
    fn sprites_beyond_max_size_spill_onto_pages_with_their_frames_together() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = r#"(atlases: { "small": (max_size: (40, 40), trim: false) }, sprites: {
            "a": (prompt: "knight", atlas: "small", size: (16, 16), frames: 3),
            "b": (prompt: "slime", atlas: "small", size: (16, 16), frames: 3),
            "c": (prompt: "bat", atlas: "small", size: (16, 16), frames: 2),
        })"#;
        let index = build(dir.path(), manifest).unwrap();
        let atlas = &index.atlases[0];
        assert!(atlas.pages.len() >= 2, "{} pages", atlas.pages.len());
        for (p, page) in atlas.pages.iter().enumerate() {
            assert!(page.width <= 40 && page.height <= 40);
            let png = image::open(&page.image).unwrap();
            assert_eq!((png.width(), png.height()), (page.width, page.height));
            let on_page: usize = atlas
                .sprites
                .iter()
                .filter(|s| s.page == p)
                .map(|s| s.frames.len())
                .sum();
            assert_eq!(
                on_page,
                page.rects.len(),
                "page {p} holds its sprites' frames"
            );
        }
        for sprite in &atlas.sprites {
            let last = *sprite.frames.last().unwrap();
            assert!(last < atlas.pages[sprite.page].rects.len());
        }
    }

    #[test]
    fn sprites_that_do_not_fit_name_the_atlas_and_sprite() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = r#"(atlases: { "tiny": (max_size: (20, 20)) }, sprites: { "big": (prompt: "tree", atlas: "tiny", size: (32, 32)) })"#;
        let error = build(dir.path(), manifest).unwrap_err().to_string();
        assert!(error.contains("tiny") && error.contains("big"), "{error}");
    }
}
