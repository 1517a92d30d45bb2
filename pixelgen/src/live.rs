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
    /// The index's stamp (a hash of what was published).
    stamp: String,
    /// By atlas ordinal, then page.
    images: Vec<Vec<Image>>,
    layouts: Vec<Vec<TextureAtlasLayout>>,
    rects: Vec<Vec<Vec<[u32; 4]>>>,
    trims: Vec<Vec<Vec<Trim>>>,
}

/// What a look at the published atlases found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The index is as it was when last looked at.
    Unchanged,
    /// The published atlases replaced the shown ones; their stamp.
    Reloaded(String),
    /// The published sprites differ from the compiled ones: a rebuild is needed.
    Mismatch(String),
    /// The index or a page could not be read or decoded (perhaps mid-publication).
    Unreadable(String),
    /// Nothing is published at the index's path (yet).
    Missing,
}

/// Replaces `S`'s atlases with the published ones when those changed and still fit.
/// Runs every frame; logs what it refuses, once per change of the index.
pub(crate) fn reload_live_atlases<S: SpriteSet>(
    mut live: ResMut<LiveAtlases<S>>,
    atlases: Option<ResMut<Atlases<S>>>,
    mut images: ResMut<Assets<Image>>,
    mut layouts: ResMut<Assets<TextureAtlasLayout>>,
) {
    let Some(mut atlases) = atlases else { return };
    match look(&mut live, &mut atlases, &mut images, &mut layouts, false) {
        Outcome::Mismatch(why) => tracing::warn!(
            "pixelgen: the published atlases in {} no longer match this build ({why}); run `cargo build` to use them — the game keeps showing the atlases it has",
            live.index.display()
        ),
        Outcome::Unreadable(why) => tracing::warn!(
            "pixelgen: cannot reload the atlases from {}: {why}",
            live.index.display()
        ),
        Outcome::Unchanged | Outcome::Reloaded(_) | Outcome::Missing => {}
    }
}

/// Reads the published atlases now, changed or not, and says what came of it (the
/// `pixelgen.reload` remote method, through which tools learn whether the game took them).
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub(crate) fn reload_now<S: SpriteSet>(
    live: Option<ResMut<LiveAtlases<S>>>,
    atlases: Option<ResMut<Atlases<S>>>,
    mut images: ResMut<Assets<Image>>,
    mut layouts: ResMut<Assets<TextureAtlasLayout>>,
) -> (Option<PathBuf>, Option<Outcome>) {
    let (Some(mut live), Some(mut atlases)) = (live, atlases) else {
        return (None, None);
    };
    let outcome = look(&mut live, &mut atlases, &mut images, &mut layouts, true);
    (Some(live.index.clone()), Some(outcome))
}

fn look<S: SpriteSet>(
    live: &mut LiveAtlases<S>,
    atlases: &mut Atlases<S>,
    images: &mut Assets<Image>,
    layouts: &mut Assets<TextureAtlasLayout>,
    force: bool,
) -> Outcome {
    let Some(now) = std::fs::metadata(&live.index)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
    else {
        return Outcome::Missing;
    };
    if live.seen == Some(now) && !force {
        return Outcome::Unchanged;
    }
    live.seen = Some(now);
    let reloaded = match read::<S>(&live.index) {
        Ok(reloaded) => reloaded,
        Err(Refused::Mismatch(why)) => return Outcome::Mismatch(why),
        Err(Refused::Unreadable(why)) => return Outcome::Unreadable(why),
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
    Outcome::Reloaded(reloaded.stamp)
}

enum Refused {
    Mismatch(String),
    Unreadable(String),
}

fn read<S: SpriteSet>(path: &Path) -> Result<Reloaded, Refused> {
    // `read` refuses another index version, with the fix.
    let index = Index::read(path).map_err(Refused::Unreadable)?;
    let mut reloaded = Reloaded {
        stamp: index.stamp.clone(),
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
