//! Texture-atlas packing: many sprite frames into as few, as small atlas
//! images as possible, plus where each frame went.
//!
//! Stages, in order: trim each frame's transparent border (keeping its offset
//! within the frame), store identical trimmed frames once (aliases share a
//! rect), lay the unique rects out (`layout`: MaxRects with global best fit,
//! the smallest atlas found, more pages only past the maximum size), render
//! with extrusion.
//!
//! Layout model: a unique rect with extrusion `e` occupies
//! `(w + 2e) x (h + 2e)`; rects are `padding` apart, and the atlas's edges carry
//! no padding. The extruded border stays inside the atlas even at its edges.
//!
//! Everything depends only on the set of `(frame id, pixels)`: inputs are
//! sorted by [`FrameId`] first, and the layout search picks its winner by a total
//! order, so the output is byte-identical whatever the input order or the
//! number of threads. Sprites are never rotated: Bevy's atlases cannot express
//! rotation.

mod layout;
mod maxrects;

pub use layout::{LayoutError, LayoutOptions, Page, RectLayout, pack_pages, pack_rects};

use std::collections::HashMap;

use image::{ImageBuffer, RgbaImage};

use crate::identity::{FrameId, SpriteName};
use pixelgen_diffusion::Tiling;

/// How one atlas is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AtlasOptions {
    /// Transparent pixels between neighbouring sprites (beyond extrusion).
    pub padding: u32,
    /// Pixels of each sprite's edge copied outward around it, against texture
    /// bleeding when sampling (0 or 1 typically).
    pub extrude: u32,
    /// A page may not be wider than this; more sprites go onto more pages.
    pub max_width: u32,
    /// A page may not be taller than this.
    pub max_height: u32,
    /// Round page sizes up to powers of two (each no larger than the largest
    /// power of two within the max size).
    pub power_of_two: bool,
    /// Cut each frame's fully transparent border off, keeping its offset in
    /// [`PackedFrame::trim`].
    pub trim: bool,
}

impl AtlasOptions {
    /// The largest page: `max_width`×`max_height`, each rounded down to a power of two
    /// when `power_of_two` is set.
    pub fn page_limit(&self) -> (u32, u32) {
        if self.power_of_two {
            (
                layout::pow2_floor(self.max_width),
                layout::pow2_floor(self.max_height),
            )
        } else {
            (self.max_width, self.max_height)
        }
    }
}

impl Default for AtlasOptions {
    /// Padding 1, extrude 1, pages of at most 4096x4096 of any size, trimmed.
    fn default() -> Self {
        Self {
            padding: 1,
            extrude: 1,
            max_width: 4096,
            max_height: 4096,
            power_of_two: false,
            trim: true,
        }
    }
}

/// One frame to pack.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Unique among the sources. Frames of the same sprite land on the same page.
    pub id: &'a FrameId,
    pub image: &'a RgbaImage,
    /// A seamless tile's axes: it is never trimmed, and its extrusion continues the
    /// opposite edge on those axes (so a sampler that bleeds past the rect sees the
    /// next tile, not a repeated edge).
    pub tiling: Option<Tiling>,
}

/// Where a frame's own (trimmed) pixels are on its page; extrusion and padding
/// are outside this rect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Left edge in page pixels.
    pub x: u32,
    /// Top edge in page pixels.
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Where a frame's packed rect lies within the untrimmed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Trim {
    /// Offset of the rect's left edge from the frame's left edge.
    pub x: u32,
    /// Offset of the rect's top edge from the frame's top edge.
    pub y: u32,
    /// The untrimmed frame's width.
    pub source_width: u32,
    /// The untrimmed frame's height.
    pub source_height: u32,
}

impl Trim {
    /// Whether anything was cut off.
    pub fn is_trimmed(&self, rect: &Placement) -> bool {
        (rect.width, rect.height) != (self.source_width, self.source_height)
    }
}

/// One packed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackedFrame {
    /// Index into [`PackedAtlas::pages`].
    pub page: usize,
    /// Its pixels on the page. Identical frames (aliases) share one rect. A
    /// frame with no opaque pixel is trimmed to an empty rect at (0, 0).
    pub rect: Placement,
    pub trim: Trim,
}

/// Packed pages and where each frame went.
#[derive(Debug)]
pub struct PackedAtlas {
    /// The page images: transparent (0, 0, 0, 0) except sprite pixels and
    /// their extrusion. At least one, at least 1x1.
    pub pages: Vec<RgbaImage>,
    /// One per input frame, in the order of the input slice.
    pub frames: Vec<PackedFrame>,
}

/// Why frames could not be packed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AtlasError {
    /// A frame, trimmed and extruded, is larger than a page.
    #[error(
        "frame `{frame}` is {width}x{height} px ({extruded_width}x{extruded_height} with \
         extrusion) and does not fit a page of at most {max_width}x{max_height} px; raise \
         `max_size` or make the sprite smaller"
    )]
    FrameTooLarge {
        frame: FrameId,
        width: u32,
        height: u32,
        extruded_width: u64,
        extruded_height: u64,
        max_width: u32,
        max_height: u32,
    },
    /// The frames of one sprite (with those of sprites sharing identical frames with it)
    /// do not fit together on one page.
    #[error(
        "the {frames} frames of `{sprite}` do not fit together on one page of at most \
         {max_width}x{max_height} px (a sprite's frames share a page); raise `max_size`"
    )]
    GroupTooLarge {
        sprite: SpriteName,
        frames: usize,
        max_width: u32,
        max_height: u32,
    },
    /// Two sources have the same id (the first duplicate in id order is named).
    #[error("frame `{0}` is given twice")]
    DuplicateFrame(FrameId),
    /// A page image could not be allocated.
    #[error("could not allocate a {width}x{height} px atlas image")]
    TooLarge { width: u32, height: u32 },
}

/// Packs frames into pages.
///
/// Ids are unique ([`AtlasError::DuplicateFrame`] otherwise). The result
/// depends only on the set of sources, never on the slice's order or the
/// thread count, and frames are never rotated. No frames (or only empty ones)
/// give one 1x1 transparent page.
pub fn pack(sources: &[Source<'_>], options: &AtlasOptions) -> Result<PackedAtlas, AtlasError> {
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].id);
    if let Some(w) = order
        .windows(2)
        .find(|w| sources[w[0]].id == sources[w[1]].id)
    {
        return Err(AtlasError::DuplicateFrame(sources[w[0]].id.clone()));
    }

    let Deduped {
        uniques,
        unique_of,
        trims,
    } = trim_and_dedupe(sources, &order, options.trim);
    let groups = page_groups(sources, &order, &unique_of, uniques.len());

    let e = options.extrude;
    let extruded = |u: &Unique| {
        if u.width == 0 || u.height == 0 {
            (0, 0)
        } else {
            (
                u64::from(u.width) + 2 * u64::from(e),
                u64::from(u.height) + 2 * u64::from(e),
            )
        }
    };
    let (max_w, max_h) = options.page_limit();
    if let Some(u) = uniques.iter().find(|u| {
        let (w, h) = extruded(u);
        w > u64::from(max_w) || h > u64::from(max_h)
    }) {
        let (extruded_width, extruded_height) = extruded(u);
        return Err(AtlasError::FrameTooLarge {
            frame: sources[u.source].id.clone(),
            width: u.width,
            height: u.height,
            extruded_width,
            extruded_height,
            max_width: max_w,
            max_height: max_h,
        });
    }
    let sizes: Vec<(u32, u32)> = uniques
        .iter()
        .map(|u| {
            let (w, h) = extruded(u);
            // Checked against the u32 maximum size above.
            (w as u32, h as u32)
        })
        .collect();
    let layout_options = LayoutOptions {
        padding: options.padding,
        max_width: options.max_width,
        max_height: options.max_height,
        power_of_two: options.power_of_two,
    };
    let pages = pack_pages(&sizes, &groups, &layout_options).map_err(
        |LayoutError::DoesNotFit { index }| {
            let group = groups[index];
            let members: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| groups[unique_of[i]] == group)
                .collect();
            AtlasError::GroupTooLarge {
                // Not empty: `index` is one of the group's rects.
                sprite: sources[members[0]].id.sprite.clone(),
                frames: members.len(),
                max_width: max_w,
                max_height: max_h,
            }
        },
    )?;

    // Each unique's page and rect.
    let mut unique_place = vec![
        (
            0,
            Placement {
                x: 0,
                y: 0,
                width: 0,
                height: 0
            }
        );
        uniques.len()
    ];
    for (p, page) in pages.iter().enumerate() {
        for (&u, &(x, y)) in page.rects.iter().zip(&page.layout.positions) {
            let unique = &uniques[u];
            let empty = unique.width == 0 || unique.height == 0;
            unique_place[u] = (
                p,
                Placement {
                    x: if empty { 0 } else { x + e },
                    y: if empty { 0 } else { y + e },
                    width: unique.width,
                    height: unique.height,
                },
            );
        }
    }
    let frames: Vec<PackedFrame> = (0..sources.len())
        .map(|i| {
            let (page, rect) = unique_place[unique_of[i]];
            PackedFrame {
                page,
                rect,
                trim: trims[i],
            }
        })
        .collect();

    let images = pages
        .iter()
        .map(|page| {
            let (w, h) = (page.layout.width.max(1), page.layout.height.max(1));
            let drawn: Vec<Drawn<'_>> = page
                .rects
                .iter()
                .map(|&u| {
                    let unique = &uniques[u];
                    Drawn {
                        image: sources[unique.source].image,
                        rect: unique_place[u].1,
                        corner: (unique.x, unique.y),
                        tiling: sources[unique.source].tiling,
                    }
                })
                .collect();
            render(w, h, &drawn, e).ok_or(AtlasError::TooLarge {
                width: w,
                height: h,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pages = if images.is_empty() {
        vec![RgbaImage::new(1, 1)]
    } else {
        images
    };
    Ok(PackedAtlas { pages, frames })
}

/// Each source's trim, and its frames deduplicated.
struct Deduped {
    /// Distinct trimmed frames, in name order of their first source.
    uniques: Vec<Unique>,
    /// Per source, its index in `uniques`.
    unique_of: Vec<usize>,
    /// Per source, where its rect lies in the frame.
    trims: Vec<Trim>,
}

/// Trims every source (in name `order`) and numbers identical trimmed pixels once.
fn trim_and_dedupe(sources: &[Source<'_>], order: &[usize], trim: bool) -> Deduped {
    let mut uniques: Vec<Unique> = Vec::new();
    let mut unique_of = vec![0; sources.len()];
    let empty = Trim {
        x: 0,
        y: 0,
        source_width: 0,
        source_height: 0,
    };
    let mut trims = vec![empty; sources.len()];
    let mut seen: HashMap<(u32, u32, Vec<u8>, Option<Tiling>), usize> = HashMap::new();
    for &i in order {
        let image = sources[i].image;
        let bounds = if trim && sources[i].tiling.is_none() {
            opaque_bounds(image)
        } else {
            Some((0, 0, image.width(), image.height()))
        };
        // Nothing opaque: an empty rect that takes no space.
        let (x, y, w, h) = bounds.unwrap_or((0, 0, 0, 0));
        trims[i] = Trim {
            x,
            y,
            source_width: image.width(),
            source_height: image.height(),
        };
        let next = uniques.len();
        let key = (w, h, crop(image, x, y, w, h), sources[i].tiling);
        let u = *seen.entry(key).or_insert(next);
        if u == next {
            uniques.push(Unique {
                source: i,
                x,
                y,
                width: w,
                height: h,
            });
        }
        unique_of[i] = u;
    }
    Deduped {
        uniques,
        unique_of,
        trims,
    }
}

/// Per unique rect, its page group: each sprite is a group, numbered by name, and groups
/// that share a rect are merged (union-find) so the rect is on every sharer's
/// page.
fn page_groups(
    sources: &[Source<'_>],
    order: &[usize],
    unique_of: &[usize],
    uniques: usize,
) -> Vec<usize> {
    let mut names: Vec<&SpriteName> = sources.iter().map(|s| &s.id.sprite).collect();
    names.sort_unstable();
    names.dedup();
    let mut parent: Vec<usize> = (0..names.len()).collect();
    let mut first: Vec<Option<usize>> = vec![None; uniques];
    for &i in order {
        let g = names.binary_search(&&sources[i].id.sprite).unwrap_or(0);
        match first[unique_of[i]] {
            None => first[unique_of[i]] = Some(g),
            Some(other) => union(&mut parent, g, other),
        }
    }
    first
        .iter()
        .map(|g| find(&mut parent, g.unwrap_or(0)))
        .collect()
}

/// A distinct trimmed frame: its first source and the rect within it.
struct Unique {
    source: usize,
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

fn find(parent: &mut [usize], mut g: usize) -> usize {
    while parent[g] != g {
        parent[g] = parent[parent[g]];
        g = parent[g];
    }
    g
}

/// Joins two groups under the smaller id, so roots do not depend on the order
/// of unions.
fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    let (lo, hi) = (ra.min(rb), ra.max(rb));
    parent[hi] = lo;
}

/// `(x, y, width, height)` of the pixels with non-zero alpha; `None` if none.
pub fn opaque_bounds(image: &RgbaImage) -> Option<(u32, u32, u32, u32)> {
    let (w, h) = image.dimensions();
    let opaque = |x: u32, y: u32| image.get_pixel(x, y)[3] != 0;
    let row = |y: u32| (0..w).any(|x| opaque(x, y));
    let top = (0..h).find(|&y| row(y))?;
    let bottom = (top..h).rev().find(|&y| row(y))?;
    let column = |x: u32| (top..=bottom).any(|y| opaque(x, y));
    let left = (0..w).find(|&x| column(x))?;
    let right = (left..w).rev().find(|&x| column(x))?;
    Some((left, top, right - left + 1, bottom - top + 1))
}

/// The raw RGBA bytes of a sub-rect.
fn crop(image: &RgbaImage, x: u32, y: u32, w: u32, h: u32) -> Vec<u8> {
    let stride = image.width() as usize * 4;
    let raw = image.as_raw();
    let mut out = Vec::with_capacity(w as usize * h as usize * 4);
    for row in y..y + h {
        let start = row as usize * stride + x as usize * 4;
        out.extend_from_slice(&raw[start..start + w as usize * 4]);
    }
    out
}

/// One rect to draw on a page.
struct Drawn<'a> {
    image: &'a RgbaImage,
    /// Where on the page.
    rect: Placement,
    /// The rect's corner in the image.
    corner: (u32, u32),
    tiling: Option<Tiling>,
}

/// Index `k` of `0..len + 2e` of an extruded line into `0..len`: the edge repeated, or
/// the opposite edge when the line wraps.
fn extruded_index(k: usize, e: usize, len: usize, wraps: bool) -> usize {
    if wraps {
        (k + len * e.div_ceil(len.max(1)) - e) % len
    } else {
        k.saturating_sub(e).min(len - 1)
    }
}

/// Draws each rect and its extrusion into a transparent page. `None` when the buffer
/// cannot be allocated.
fn render(width: u32, height: u32, drawn: &[Drawn<'_>], extrude: u32) -> Option<RgbaImage> {
    let stride = usize::try_from(width).ok()?.checked_mul(4)?;
    let len = stride.checked_mul(usize::try_from(height).ok()?)?;
    let mut buf = Vec::new();
    // try_reserve so a huge atlas is an error, not an abort.
    buf.try_reserve_exact(len).ok()?;
    buf.resize(len, 0u8);

    let e = usize::try_from(extrude).ok()?;
    for &Drawn {
        image: img,
        rect: p,
        corner: (ox, oy),
        tiling,
    } in drawn
    {
        if p.width == 0 || p.height == 0 {
            continue;
        }
        let (wraps_x, wraps_y) = tiling.map_or((false, false), |t| (t.wraps_x(), t.wraps_y()));
        let (sw, sh) = (p.width as usize, p.height as usize);
        let (x0, y0) = (p.x as usize - e, p.y as usize - e);
        let raw = img.as_raw();
        let img_stride = img.width() as usize * 4;
        let src_len = sw * 4;
        let out_len = (sw + 2 * e) * 4;
        for dy in 0..sh + 2 * e {
            // Rows above/below the sprite repeat its first/last row (a tile's continue
            // from its other edge).
            let sy = oy as usize + extruded_index(dy, e, sh, wraps_y);
            let from = sy * img_stride + ox as usize * 4;
            let src = &raw[from..from + src_len];
            let start = (y0 + dy) * stride + x0 * 4;
            let dst = &mut buf[start..start + out_len];
            let (left, rest) = dst.split_at_mut(e * 4);
            let (mid, right) = rest.split_at_mut(src_len);
            mid.copy_from_slice(src);
            for (k, px) in left.chunks_exact_mut(4).enumerate() {
                let sx = extruded_index(k, e, sw, wraps_x);
                px.copy_from_slice(&src[sx * 4..sx * 4 + 4]);
            }
            for (k, px) in right.chunks_exact_mut(4).enumerate() {
                let sx = extruded_index(e + sw + k, e, sw, wraps_x);
                px.copy_from_slice(&src[sx * 4..sx * 4 + 4]);
            }
        }
    }
    ImageBuffer::from_raw(width, height, buf)
}

#[cfg(test)]
mod tests;
