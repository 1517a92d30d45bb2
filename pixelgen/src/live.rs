//! Reloading published atlases while the game runs (dev builds).
//!
//! Builds and `cargo pixelgen watch` publish each crate's atlases as `index.json` and page
//! PNGs ([`SpriteSet::LIVE_INDEX`]). Every frame, [`reload_live_atlases`] looks at the
//! index's size and modification time (one `stat`); when they change it reads the index,
//! and if every atlas still has the same sprites with the same frames on the same pages
//! (what the compiled constants point at), it decodes the pages and replaces the `Image`
//! and `TextureAtlasLayout` assets in place, under the same handles, and the rects and
//! trims in [`Atlases`]. Anything else is logged once per change and the atlases shown stay
//! as they are: a half-written or mismatched publication never breaks the running game.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bevy::asset::{Assets, RenderAssetUsages};
use bevy::ecs::prelude::*;
use bevy::image::{CompressedImageFormats, Image, ImageSampler, ImageType, TextureAtlasLayout};
use bevy::math::UVec2;
use pixelgen_index::Index;

use crate::{Atlases, SpriteSet, Trim, rect};

/// Where `S`'s published atlases are, and what was last seen there.
#[derive(Resource)]
pub(crate) struct LiveAtlases<S: SpriteSet> {
    index: PathBuf,
    /// Size and modification time of the index when it was last looked at.
    seen: Option<(u64, Option<SystemTime>)>,
    set: PhantomData<fn() -> S>,
}

impl<S: SpriteSet> LiveAtlases<S> {
    pub(crate) fn new(index: PathBuf) -> Self {
        LiveAtlases {
            index,
            seen: None,
            set: PhantomData,
        }
    }
}

/// A published atlas set, decoded and checked against the compiled one.
struct Reloaded {
    /// By atlas ordinal, then page.
    images: Vec<Vec<Image>>,
    layouts: Vec<Vec<TextureAtlasLayout>>,
    rects: Vec<Vec<Vec<[u32; 4]>>>,
    trims: Vec<Vec<Vec<Trim>>>,
}

/// Replaces `S`'s atlases with the published ones when those changed and still fit.
pub(crate) fn reload_live_atlases<S: SpriteSet>(
    mut live: ResMut<LiveAtlases<S>>,
    atlases: Option<ResMut<Atlases<S>>>,
    mut images: ResMut<Assets<Image>>,
    mut layouts: ResMut<Assets<TextureAtlasLayout>>,
) {
    let Some(mut atlases) = atlases else { return };
    let now = std::fs::metadata(&live.index)
        .ok()
        .map(|m| (m.len(), m.modified().ok()));
    let Some(now) = now else { return };
    if live.seen == Some(now) {
        return;
    }
    live.seen = Some(now);
    let reloaded = match read::<S>(&live.index) {
        Ok(reloaded) => reloaded,
        Err(Refused::Mismatch(why)) => {
            tracing::warn!(
                "pixelgen: the published atlases in {} no longer match this build ({why}); run `cargo build` to use them — the game keeps showing the atlases it has",
                live.index.display()
            );
            return;
        }
        Err(Refused::Unreadable(why)) => {
            tracing::warn!(
                "pixelgen: cannot reload the atlases from {}: {why}",
                live.index.display()
            );
            return;
        }
    };
    for (ordinal, pages) in reloaded.images.into_iter().enumerate() {
        for (page, image) in pages.into_iter().enumerate() {
            let _ = images.insert(atlases.images[ordinal][page].id(), image);
        }
    }
    for (ordinal, pages) in reloaded.layouts.into_iter().enumerate() {
        for (page, layout) in pages.into_iter().enumerate() {
            let _ = layouts.insert(atlases.layouts[ordinal][page].id(), layout);
        }
    }
    atlases.rects = reloaded.rects;
    atlases.trims = reloaded.trims;
}

enum Refused {
    /// The published sprites differ from the compiled ones: a rebuild is needed.
    Mismatch(String),
    /// The files could not be read or decoded (perhaps mid-publication).
    Unreadable(String),
}

fn read<S: SpriteSet>(path: &Path) -> Result<Reloaded, Refused> {
    // `read` refuses another index version, with the fix.
    let index = Index::read(path).map_err(Refused::Unreadable)?;
    let mut reloaded = Reloaded {
        images: Vec::new(),
        layouts: Vec::new(),
        rects: Vec::new(),
        trims: Vec::new(),
    };
    for compiled in S::ATLASES {
        let Some(published) = index.atlases.iter().find(|a| a.name == compiled.name) else {
            return Err(Refused::Mismatch(format!(
                "atlas `{}` is gone",
                compiled.name
            )));
        };
        if published.pages.len() != compiled.pages.len() {
            return Err(Refused::Mismatch(format!(
                "atlas `{}` has {} page(s) instead of {}",
                compiled.name,
                published.pages.len(),
                compiled.pages.len()
            )));
        }
        let slots: Vec<(&str, usize, usize, usize)> = published
            .sprites
            .iter()
            .map(|s| {
                let first = s.frames.first().copied().unwrap_or(0);
                (s.name.as_str(), s.page, first, s.frames.len())
            })
            .collect();
        let compiled_slots: Vec<(&str, usize, usize, usize)> = compiled
            .sprites
            .iter()
            .map(|s| (s.name, s.page, s.first, s.len))
            .collect();
        if slots != compiled_slots {
            let difference = compiled_slots
                .iter()
                .find(|c| !slots.contains(c))
                .map(|c| format!("sprite `{}` moved, changed its frames or is gone", c.0))
                .or_else(|| {
                    slots
                        .iter()
                        .find(|p| !compiled_slots.contains(p))
                        .map(|p| format!("sprite `{}` is new or changed", p.0))
                })
                .unwrap_or_default();
            return Err(Refused::Mismatch(format!(
                "atlas `{}`: {difference}",
                compiled.name
            )));
        }
        let (mut images, mut layouts, mut rects, mut trims) = (vec![], vec![], vec![], vec![]);
        for page in &published.pages {
            let bytes = std::fs::read(&page.image)
                .map_err(|e| Refused::Unreadable(format!("{}: {e}", page.image.display())))?;
            let image = Image::from_buffer(
                &bytes,
                ImageType::Extension("png"),
                CompressedImageFormats::NONE,
                true,
                ImageSampler::nearest(),
                RenderAssetUsages::default(),
            )
            .map_err(|e| Refused::Unreadable(format!("{}: {e}", page.image.display())))?;
            if page.rects.len() != page.trims.len() {
                return Err(Refused::Unreadable(format!(
                    "a page of atlas `{}` has {} rects but {} trims",
                    compiled.name,
                    page.rects.len(),
                    page.trims.len()
                )));
            }
            images.push(image);
            layouts.push(TextureAtlasLayout {
                size: UVec2::new(page.width, page.height),
                textures: page.rects.iter().map(|r| rect(*r)).collect(),
            });
            rects.push(page.rects.clone());
            trims.push(
                page.trims
                    .iter()
                    .map(|&[x, y, frame_width, frame_height]| Trim {
                        x,
                        y,
                        frame_width,
                        frame_height,
                    })
                    .collect(),
            );
        }
        reloaded.images.push(images);
        reloaded.layouts.push(layouts);
        reloaded.rects.push(rects);
        reloaded.trims.push(trims);
    }
    Ok(reloaded)
}
