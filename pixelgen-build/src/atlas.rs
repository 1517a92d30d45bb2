//! Texture-atlas packing: many sprites into one image plus a rect per sprite.
//!
//! Layout model: every sprite with pixels gets a *cell* of
//! `(width + 2*extrude + padding) x (height + 2*extrude + padding)` that holds
//! the sprite, its extruded border and the padding on its right and bottom.
//! Cells are packed with MaxRects (best-short-side-fit) into a bin of
//! `(atlas_width + padding) x (atlas_height + padding)`, so neighbouring sprites
//! are always `padding` apart while the atlas's right and bottom edges carry no
//! padding (the left and top edges never did). The extruded border stays inside
//! the atlas even at its edges.
//!
//! The layout depends only on the sprites' names and sizes, taken in the total
//! order (height desc, width desc, name asc), so the same set of sprites gives
//! byte-identical output in any input order. Sprites are never rotated, since
//! Bevy's texture atlases cannot express rotation.

use image::{ImageBuffer, RgbaImage};
use std::cmp::Reverse;

/// How one atlas is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AtlasOptions {
    /// Transparent pixels between neighbouring sprites (beyond extrusion).
    pub padding: u32,
    /// Pixels of each sprite's edge copied outward around it, against texture
    /// bleeding when sampling (0 or 1 typically).
    pub extrude: u32,
    /// The atlas may not be wider than this.
    pub max_width: u32,
    /// The atlas may not be taller than this.
    pub max_height: u32,
    /// Round the atlas size up to powers of two (each no larger than the
    /// largest power of two within the max size).
    pub power_of_two: bool,
}

impl Default for AtlasOptions {
    /// Padding 1, extrude 1, at most 4096x4096, any size.
    fn default() -> Self {
        Self {
            padding: 1,
            extrude: 1,
            max_width: 4096,
            max_height: 4096,
            power_of_two: false,
        }
    }
}

/// Where one sprite's own pixels are in the atlas (extrusion and padding are
/// outside this rect).
///
/// `width`/`height` always equal the sprite's size. A sprite with zero width or
/// height takes no space: it is placed at (0, 0) and covers no pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Left edge in atlas pixels.
    pub x: u32,
    /// Top edge in atlas pixels.
    pub y: u32,
    /// The sprite's width.
    pub width: u32,
    /// The sprite's height.
    pub height: u32,
}

/// A packed atlas image and where each sprite went.
#[derive(Debug)]
pub struct PackedAtlas {
    /// The atlas: transparent (0, 0, 0, 0) except sprite pixels and extrusion.
    pub image: RgbaImage,
    /// One per input sprite, in the order of the input slice.
    pub placements: Vec<Placement>,
}

/// Why sprites could not be packed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AtlasError {
    /// A sprite does not fit: either it alone is larger than the max size
    /// (with extrusion), or it is the first one (in packing order) for which no
    /// room was left.
    #[error(
        "sprite `{sprite}` ({width}x{height} px) does not fit into an atlas of at most \
         {max_width}x{max_height} px; with padding and extrusion the sprites need about \
         {needed_area_hint} px² (about {side}x{side}); raise max_width/max_height or \
         split the sprites into another atlas",
        side = .needed_area_hint.isqrt()
    )]
    DoesNotFit {
        /// The sprite that could not be placed.
        sprite: String,
        /// Its width in pixels (without extrusion).
        width: u32,
        /// Its height in pixels (without extrusion).
        height: u32,
        /// The atlas width limit in force.
        max_width: u32,
        /// The atlas height limit in force.
        max_height: u32,
        /// Total area of all sprites' cells (sprite + extrusion + padding): the
        /// atlas must be roughly at least this large.
        needed_area_hint: u64,
    },
    /// Two sprites share a name (the lexicographically first duplicate is named).
    #[error("duplicate sprite name {0}")]
    DuplicateName(String),
    /// The atlas image could not be allocated.
    #[error("could not allocate a {width}x{height} px atlas image")]
    TooLarge {
        /// Atlas width in pixels.
        width: u32,
        /// Atlas height in pixels.
        height: u32,
    },
}

/// Packs sprites `(name, pixels)` into one atlas.
///
/// Names are unique keys ([`AtlasError::DuplicateName`] otherwise). The result
/// depends only on the set of `(name, pixels)`, never on the slice's order, and
/// sprites are never rotated. Zero sprites (or only zero-size ones) give a 1x1
/// transparent atlas; zero-size sprites get a zero-area placement at (0, 0).
///
/// Layout: MaxRects best-short-side-fit over cells sorted by (height desc,
/// width desc, name asc), trying a few bin sizes and keeping the smallest
/// atlas; see the module docs for how padding and extrusion are laid out.
pub fn pack(
    sprites: &[(&str, &RgbaImage)],
    options: &AtlasOptions,
) -> Result<PackedAtlas, AtlasError> {
    check_unique(sprites)?;

    let pad = u64::from(options.padding);
    let ext = u64::from(options.extrude);
    let (max_w, max_h) = if options.power_of_two {
        (
            pow2_floor(options.max_width),
            pow2_floor(options.max_height),
        )
    } else {
        (options.max_width, options.max_height)
    };

    // Internal total order: big-first packs tighter; the name makes it total so
    // the input order cannot matter.
    let mut order: Vec<usize> = (0..sprites.len())
        .filter(|&i| sprites[i].1.width() > 0 && sprites[i].1.height() > 0)
        .collect();
    order.sort_by_key(|&i| {
        let (name, img) = sprites[i];
        (Reverse(img.height()), Reverse(img.width()), name)
    });

    let cells: Vec<Cell> = order
        .iter()
        .map(|&i| Cell {
            w: u64::from(sprites[i].1.width()) + 2 * ext + pad,
            h: u64::from(sprites[i].1.height()) + 2 * ext + pad,
        })
        .collect();
    let total_area = cells
        .iter()
        .fold(0u64, |acc, c| acc.saturating_add(c.w.saturating_mul(c.h)));

    let does_not_fit = |k: usize| {
        let (name, img) = sprites[order[k]];
        AtlasError::DoesNotFit {
            sprite: name.to_owned(),
            width: img.width(),
            height: img.height(),
            max_width: max_w,
            max_height: max_h,
            needed_area_hint: total_area,
        }
    };

    // A sprite larger than the limit by itself is the clearest thing to report.
    if let Some(k) = cells
        .iter()
        .position(|c| c.w - pad > u64::from(max_w) || c.h - pad > u64::from(max_h))
    {
        return Err(does_not_fit(k));
    }

    let layout = if cells.is_empty() {
        Layout {
            width: 1,
            height: 1,
            cells: Vec::new(),
        }
    } else {
        let search = Search {
            cells: &cells,
            pad,
            bin_w: u64::from(max_w) + pad,
            bin_h: u64::from(max_h) + pad,
            total_area,
            pow2: options.power_of_two,
        };
        search.run().map_err(does_not_fit)?
    };

    let too_large = || AtlasError::TooLarge {
        width: u32::try_from(layout.width).unwrap_or(u32::MAX),
        height: u32::try_from(layout.height).unwrap_or(u32::MAX),
    };
    let width = u32::try_from(layout.width).map_err(|_| too_large())?;
    let height = u32::try_from(layout.height).map_err(|_| too_large())?;

    let mut placements: Vec<Placement> = sprites
        .iter()
        .map(|(_, img)| Placement {
            x: 0,
            y: 0,
            width: img.width(),
            height: img.height(),
        })
        .collect();
    for (&i, cell) in order.iter().zip(&layout.cells) {
        // The sprite sits inside its cell after the extruded border.
        placements[i].x = u32::try_from(cell.x0 + ext).map_err(|_| too_large())?;
        placements[i].y = u32::try_from(cell.y0 + ext).map_err(|_| too_large())?;
    }

    let image =
        render(width, height, sprites, &placements, options.extrude).ok_or_else(too_large)?;
    Ok(PackedAtlas { image, placements })
}

/// Rejects repeated names, naming the lexicographically first one so the
/// error does not depend on input order.
fn check_unique(sprites: &[(&str, &RgbaImage)]) -> Result<(), AtlasError> {
    let mut names: Vec<&str> = sprites.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(AtlasError::DuplicateName(w[0].to_owned())),
        None => Ok(()),
    }
}

/// Largest power of two not above `n` (0 stays 0: nothing fits).
fn pow2_floor(n: u32) -> u32 {
    match n {
        0 => 0,
        _ => 1 << (31 - n.leading_zeros()),
    }
}

/// Smallest power of two not below `n` (`n` is at most 2^32 here).
fn pow2_ceil(n: u64) -> u64 {
    n.checked_next_power_of_two().unwrap_or(u64::MAX)
}

/// A sprite's footprint in the bin: sprite + 2*extrude + padding per axis.
#[derive(Debug, Clone, Copy)]
struct Cell {
    w: u64,
    h: u64,
}

/// Axis-aligned rect in bin coordinates, as corners `[x0, x1) x [y0, y1)`
/// (u64: cells may exceed u32 with huge padding/extrusion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x0: u64,
    y0: u64,
    x1: u64,
    y1: u64,
}

impl Rect {
    fn contains(&self, o: &Rect) -> bool {
        self.x0 <= o.x0 && self.y0 <= o.y0 && o.x1 <= self.x1 && o.y1 <= self.y1
    }
}

/// Which side of the placed rect a split piece lies on.
const LEFT: usize = 0;
const RIGHT: usize = 1;
const ABOVE: usize = 2;
const BELOW: usize = 3;

/// MaxRects free-space tracker; buffers are reused across packing attempts.
#[derive(Debug, Default)]
struct MaxRects {
    /// Maximal free rects; none contains another.
    free: Vec<Rect>,
    /// Pieces of free rects cut by the last placement, with their side.
    split: Vec<(Rect, usize)>,
    /// Surviving free rects flush against each side of the last placement.
    touch: [Vec<Rect>; 4],
    /// Per cell: the smallest width and height among the cells after it.
    min_after: Vec<(u64, u64)>,
}

impl MaxRects {
    fn reset(&mut self, w: u64, h: u64) {
        self.free.clear();
        self.free.push(Rect {
            x0: 0,
            y0: 0,
            x1: w,
            y1: h,
        });
    }

    /// Best-short-side-fit. Ties: smaller long-side leftover, then topmost,
    /// then leftmost, so the choice never depends on the free list's order.
    fn find(&self, w: u64, h: u64) -> Option<Rect> {
        let mut best: Option<(u64, u64, u64, u64)> = None;
        for f in &self.free {
            let (fw, fh) = (f.x1 - f.x0, f.y1 - f.y0);
            if fw < w || fh < h {
                continue;
            }
            let (dw, dh) = (fw - w, fh - h);
            let key = (dw.min(dh), dw.max(dh), f.y0, f.x0);
            if best.is_none_or(|k| key < k) {
                best = Some(key);
            }
        }
        best.map(|(_, _, y0, x0)| Rect {
            x0,
            y0,
            x1: x0 + w,
            y1: y0 + h,
        })
    }

    /// Marks `used` as taken: splits every free rect it overlaps into up to four
    /// maximal pieces and drops pieces contained in another free rect.
    ///
    /// Free rects narrower than `min_w` or shorter than `min_h` (the smallest
    /// cells still to come) are dropped too: no later cell can use them, nor
    /// any piece of them, and a usable rect never lies inside one, so the
    /// layout is unchanged while the free list (the cost) shrinks a lot.
    fn place(&mut self, used: Rect, min_w: u64, min_h: u64) {
        let usable = |r: &Rect| r.x1 - r.x0 >= min_w && r.y1 - r.y0 >= min_h;
        self.split.clear();
        for t in &mut self.touch {
            t.clear();
        }
        let mut i = 0;
        while i < self.free.len() {
            let f = self.free[i];
            let u = &used;
            // Bitwise `&`/`|` instead of `&&`/`||`: one well-predicted branch
            // for the common case of a free rect far from `used`.
            let overlaps = (f.x0 < u.x1) & (u.x0 < f.x1) & (f.y0 < u.y1) & (u.y0 < f.y1);
            let touching = [f.x1 == u.x0, f.x0 == u.x1, f.y1 == u.y0, f.y0 == u.y1];
            if !overlaps {
                if !usable(&f) {
                    self.free.swap_remove(i);
                    continue;
                }
                if touching[0] | touching[1] | touching[2] | touching[3] {
                    // Only a survivor flush against `used` on a piece's side
                    // can contain that piece (see below), so remember those.
                    for (side, t) in touching.into_iter().enumerate() {
                        if t {
                            self.touch[side].push(f);
                        }
                    }
                }
                i += 1;
                continue;
            }
            self.free.swap_remove(i);
            if used.x0 > f.x0 {
                self.split.push((Rect { x1: used.x0, ..f }, LEFT));
            }
            if used.x1 < f.x1 {
                self.split.push((Rect { x0: used.x1, ..f }, RIGHT));
            }
            if used.y0 > f.y0 {
                self.split.push((Rect { y1: used.y0, ..f }, ABOVE));
            }
            if used.y1 < f.y1 {
                self.split.push((Rect { y0: used.y1, ..f }, BELOW));
            }
        }
        self.split.retain(|(r, _)| usable(r));
        // Drop pieces inside other pieces; among equal pieces keep the first.
        let split = &mut self.split;
        let mut n = 0;
        while n < split.len() {
            let r = split[n].0;
            let dominated = split
                .iter()
                .enumerate()
                .any(|(m, (o, _))| m != n && o.contains(&r) && (*o != r || m < n));
            if dominated {
                split.swap_remove(n);
            } else {
                n += 1;
            }
        }
        // Drop pieces inside survivors. A piece left of `used` spans its free
        // rect's rows, which overlap `used`; a survivor containing it spans
        // them too without overlapping `used`, so its right edge is exactly
        // `used.x0`. Likewise for the other sides: checking the touching
        // survivors suffices. (Survivors never lie inside a piece: each piece
        // lies inside a removed free rect, and free rects never nest.)
        for &(r, side) in split.iter() {
            if !self.touch[side].iter().any(|f| f.contains(&r)) {
                self.free.push(r);
            }
        }
    }

    /// Packs `cells` in order into a `w x h` bin, writing positions to `out`.
    /// On failure returns the index of the first cell that found no room.
    fn pack(&mut self, cells: &[Cell], w: u64, h: u64, out: &mut Vec<Rect>) -> Result<(), usize> {
        self.reset(w, h);
        out.clear();
        // Smallest width and height among the cells after each one.
        self.min_after.clear();
        self.min_after.resize(cells.len(), (u64::MAX, u64::MAX));
        for k in (1..cells.len()).rev() {
            let (mw, mh) = self.min_after[k];
            self.min_after[k - 1] = (mw.min(cells[k].w), mh.min(cells[k].h));
        }
        for (k, c) in cells.iter().enumerate() {
            let r = self.find(c.w, c.h).ok_or(k)?;
            let (min_w, min_h) = self.min_after[k];
            self.place(r, min_w, min_h);
            out.push(r);
        }
        Ok(())
    }
}

/// A finished layout: atlas size and each cell's rect (in internal order).
#[derive(Debug)]
struct Layout {
    width: u64,
    height: u64,
    cells: Vec<Rect>,
}

impl Layout {
    /// Smaller area first, then squarer, then narrower. The area counts one
    /// padding row and column, as if every cell carried its own: otherwise a
    /// one-row strip always wins by saving the padding between rows.
    fn key(&self, pad: u64) -> (u64, u64, u64) {
        (
            (self.width + pad).saturating_mul(self.height + pad),
            self.width.abs_diff(self.height),
            self.width,
        )
    }
}

/// Searches bin sizes for the smallest atlas.
struct Search<'a> {
    cells: &'a [Cell],
    pad: u64,
    /// Largest allowed bin (max atlas size + padding).
    bin_w: u64,
    bin_h: u64,
    total_area: u64,
    pow2: bool,
}

/// Tracks the best layout found so far.
struct Best<'a> {
    search: &'a Search<'a>,
    packer: MaxRects,
    scratch: Vec<Rect>,
    best: Option<Layout>,
}

impl Best<'_> {
    /// Tries one bin size; keeps the layout if it beats the best so far.
    fn attempt(&mut self, w: u64, h: u64) -> Result<(), usize> {
        let s = self.search;
        self.packer.pack(s.cells, w, h, &mut self.scratch)?;
        // Trim to what is used; the last row/column needs no trailing padding.
        let used_w = self.scratch.iter().map(|r| r.x1).max().unwrap_or(0);
        let used_h = self.scratch.iter().map(|r| r.y1).max().unwrap_or(0);
        let (mut width, mut height) = (used_w - s.pad, used_h - s.pad);
        if s.pow2 {
            (width, height) = (pow2_ceil(width), pow2_ceil(height));
        }
        let candidate = Layout {
            width,
            height,
            cells: Vec::new(),
        };
        if self
            .best
            .as_ref()
            .is_none_or(|b| candidate.key(s.pad) < b.key(s.pad))
        {
            self.best = Some(Layout {
                cells: self.scratch.clone(),
                ..candidate
            });
        }
        Ok(())
    }
}

impl Search<'_> {
    /// Runs the search; on failure returns the index of the first cell that
    /// did not fit into the largest allowed bin.
    fn run(&self) -> Result<Layout, usize> {
        let mut best = Best {
            search: self,
            packer: MaxRects::default(),
            scratch: Vec::with_capacity(self.cells.len()),
            best: None,
        };
        if self.pow2 {
            self.search_pow2(&mut best);
        } else {
            self.search_free(&mut best);
        }
        if best.best.is_none() {
            // The largest bin decides: a fallback layout or the first misfit.
            best.attempt(self.bin_w, self.bin_h)?;
        }
        best.best.ok_or(0)
    }

    fn widest(&self) -> u64 {
        self.cells.iter().map(|c| c.w).max().unwrap_or(0)
    }

    fn tallest(&self) -> u64 {
        self.cells.iter().map(|c| c.h).max().unwrap_or(0)
    }

    /// Any size: three widths around the square root of the cell area (the
    /// winner among more candidates is mostly noise, each costs ~5 packs),
    /// each with the least height found by galloping up from the area bound
    /// and then bisecting to within 1/128. MaxRects is not strictly monotone
    /// in height, so this finds a good height rather than provably the least;
    /// every success is still a valid layout.
    fn search_free(&self, best: &mut Best<'_>) {
        let root = self.total_area.isqrt();
        let side = root + u64::from(root.saturating_mul(root) < self.total_area);
        // Narrower than this would need more than the allowed height.
        let narrowest = self
            .widest()
            .max(self.total_area.div_ceil(self.bin_h.max(1)));
        let mut seen = Vec::new();
        for (num, den) in [(1, 1), (4, 5), (5, 4)] {
            let w = (side.saturating_mul(num) / den)
                .max(narrowest)
                .min(self.bin_w);
            if !seen.contains(&w) {
                seen.push(w);
                self.search_height(best, w);
            }
        }
    }

    fn search_height(&self, best: &mut Best<'_>, w: u64) {
        let lo = self.tallest().max(self.total_area.div_ceil(w.max(1)));
        if lo > self.bin_h {
            return;
        }
        let tolerance = (lo / 128).max(1);
        // Exactly the area bound succeeds for perfect grids of equal frames.
        let mut failed = lo - 1;
        let mut h = lo;
        let mut step = (lo / 32).max(1);
        let mut ok = loop {
            if best.attempt(w, h).is_ok() {
                break h;
            }
            failed = h;
            if h >= self.bin_h {
                return;
            }
            h = h.saturating_add(step).min(self.bin_h);
            step = step.saturating_mul(2);
        };
        while ok - failed > tolerance {
            let mid = failed + (ok - failed) / 2;
            if best.attempt(w, mid).is_ok() {
                ok = mid;
            } else {
                failed = mid;
            }
        }
    }

    /// Power-of-two sizes: every power-of-two width that could still beat the
    /// best area, each with the least power-of-two height by bisection.
    fn search_pow2(&self, best: &mut Best<'_>) {
        let (pad, area) = (self.pad, self.total_area);
        let max_w = self.bin_w - pad;
        let max_h = self.bin_h - pad;
        let mut w = pow2_ceil(self.widest() - pad);
        while w <= max_w {
            let bin_w = w + pad;
            let need_h = self.tallest().max(area.div_ceil(bin_w)) - pad;
            let lo_h = pow2_ceil(need_h.max(1));
            let beaten = best
                .best
                .as_ref()
                .is_some_and(|b| bin_w.saturating_mul(lo_h + pad) > b.key(pad).0);
            if lo_h <= max_h && !beaten {
                // Bisect over exponents (even max_h may fail at this width).
                let (mut lo_e, mut hi_e) = (lo_h.trailing_zeros(), max_h.trailing_zeros());
                while lo_e <= hi_e {
                    let mid = lo_e + (hi_e - lo_e) / 2;
                    if best.attempt(bin_w, (1u64 << mid) + pad).is_ok() {
                        if mid == 0 {
                            break;
                        }
                        hi_e = mid - 1;
                    } else {
                        lo_e = mid + 1;
                    }
                }
            }
            w *= 2;
        }
    }
}

/// Draws sprites and their extrusion into a transparent atlas. `None` when the
/// buffer cannot be allocated.
fn render(
    width: u32,
    height: u32,
    sprites: &[(&str, &RgbaImage)],
    placements: &[Placement],
    extrude: u32,
) -> Option<RgbaImage> {
    let stride = usize::try_from(width).ok()?.checked_mul(4)?;
    let len = stride.checked_mul(usize::try_from(height).ok()?)?;
    let mut buf = Vec::new();
    // try_reserve so a huge atlas is an error, not an abort.
    buf.try_reserve_exact(len).ok()?;
    buf.resize(len, 0u8);

    let e = usize::try_from(extrude).ok()?;
    for ((_, img), p) in sprites.iter().zip(placements) {
        if p.width == 0 || p.height == 0 {
            continue;
        }
        let (sw, sh) = (p.width as usize, p.height as usize);
        let (x0, y0) = (p.x as usize - e, p.y as usize - e);
        let raw = img.as_raw();
        let src_stride = sw * 4;
        let out_len = (sw + 2 * e) * 4;
        for dy in 0..sh + 2 * e {
            // Rows above/below the sprite repeat its first/last row.
            let sy = dy.saturating_sub(e).min(sh - 1);
            let src = &raw[sy * src_stride..(sy + 1) * src_stride];
            let start = (y0 + dy) * stride + x0 * 4;
            let dst = &mut buf[start..start + out_len];
            let (left, rest) = dst.split_at_mut(e * 4);
            let (mid, right) = rest.split_at_mut(src_stride);
            mid.copy_from_slice(src);
            for px in left.chunks_exact_mut(4) {
                px.copy_from_slice(&src[..4]);
            }
            for px in right.chunks_exact_mut(4) {
                px.copy_from_slice(&src[src_stride - 4..]);
            }
        }
    }
    ImageBuffer::from_raw(width, height, buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    /// Deterministic xorshift so tests need no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + (self.next() % u64::from(hi - lo + 1)) as u32
        }
    }

    /// Every pixel distinct within a sprite and across sprites (mostly).
    fn sprite(seed: u32, w: u32, h: u32) -> RgbaImage {
        RgbaImage::from_fn(w, h, |x, y| {
            Rgba([
                seed as u8,
                x as u8,
                y as u8,
                (seed >> 8) as u8 | 0x80 | ((x + y) & 1) as u8,
            ])
        })
    }

    fn random_sprites(n: usize, lo: u32, hi: u32, seed: u64) -> Vec<(String, RgbaImage)> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|i| {
                let (w, h) = (rng.range(lo, hi), rng.range(lo, hi));
                (format!("sprite_{i:05}"), sprite(i as u32, w, h))
            })
            .collect()
    }

    fn refs(sprites: &[(String, RgbaImage)]) -> Vec<(&str, &RgbaImage)> {
        sprites.iter().map(|(n, i)| (n.as_str(), i)).collect()
    }

    fn opts(padding: u32, extrude: u32) -> AtlasOptions {
        AtlasOptions {
            padding,
            extrude,
            ..AtlasOptions::default()
        }
    }

    /// Checks bounds, spacing, pixels, extrusion and transparency elsewhere.
    fn check_atlas(sprites: &[(&str, &RgbaImage)], o: &AtlasOptions, atlas: &PackedAtlas) {
        let (aw, ah) = atlas.image.dimensions();
        assert!(aw <= o.max_width && ah <= o.max_height);
        assert_eq!(atlas.placements.len(), sprites.len());
        let e = o.extrude;
        let gap = o.padding + 2 * e;
        let mut covered = vec![false; (aw * ah) as usize];
        for ((_, img), p) in sprites.iter().zip(&atlas.placements) {
            assert_eq!((p.width, p.height), img.dimensions());
            if p.width == 0 || p.height == 0 {
                continue;
            }
            // Extruded cell inside the atlas.
            assert!(p.x >= e && p.y >= e, "{p:?}");
            assert!(p.x + p.width + e <= aw && p.y + p.height + e <= ah, "{p:?}");
            for ay in p.y - e..p.y + p.height + e {
                for ax in p.x - e..p.x + p.width + e {
                    // Nearest edge pixel: clamp into the sprite.
                    let sx = ax.clamp(p.x, p.x + p.width - 1) - p.x;
                    let sy = ay.clamp(p.y, p.y + p.height - 1) - p.y;
                    assert_eq!(atlas.image.get_pixel(ax, ay), img.get_pixel(sx, sy));
                    covered[(ay * aw + ax) as usize] = true;
                }
            }
        }
        for (i, px) in atlas.image.pixels().enumerate() {
            if !covered[i] {
                assert_eq!(*px, Rgba([0, 0, 0, 0]), "stray pixel at {i}");
            }
        }
        let placed: Vec<&Placement> = atlas
            .placements
            .iter()
            .filter(|p| p.width > 0 && p.height > 0)
            .collect();
        for (i, a) in placed.iter().enumerate() {
            for b in &placed[i + 1..] {
                let apart = a.x + a.width + gap <= b.x
                    || b.x + b.width + gap <= a.x
                    || a.y + a.height + gap <= b.y
                    || b.y + b.height + gap <= a.y;
                assert!(apart, "{a:?} and {b:?} closer than {gap}");
            }
        }
    }

    #[test]
    fn random_sprites_are_packed_validly() {
        for (seed, (p, e)) in [(0, 0), (1, 1), (2, 0), (0, 2), (3, 1)]
            .into_iter()
            .enumerate()
        {
            let owned = random_sprites(120, 1, 40, seed as u64 + 7);
            let sprites = refs(&owned);
            let o = opts(p, e);
            let atlas = pack(&sprites, &o).expect("fits");
            check_atlas(&sprites, &o, &atlas);
        }
    }

    #[test]
    fn extruded_pixels_equal_edge_pixels() {
        let img = sprite(3, 5, 4);
        let sprites = [("a", &img)];
        let o = opts(0, 2);
        let atlas = pack(&sprites, &o).expect("fits");
        assert_eq!(atlas.image.dimensions(), (9, 8));
        assert_eq!(
            atlas.placements[0],
            Placement {
                x: 2,
                y: 2,
                width: 5,
                height: 4
            }
        );
        // Corners take the corner pixel, edges the nearest edge pixel.
        assert_eq!(atlas.image.get_pixel(0, 0), img.get_pixel(0, 0));
        assert_eq!(atlas.image.get_pixel(8, 7), img.get_pixel(4, 3));
        assert_eq!(atlas.image.get_pixel(4, 0), img.get_pixel(2, 0));
        assert_eq!(atlas.image.get_pixel(8, 3), img.get_pixel(4, 1));
        check_atlas(&sprites, &o, &atlas);
    }

    #[test]
    fn sprite_pixels_are_copied_exactly() {
        let owned = random_sprites(30, 1, 20, 99);
        let sprites = refs(&owned);
        let atlas = pack(&sprites, &AtlasOptions::default()).expect("fits");
        for ((_, img), p) in sprites.iter().zip(&atlas.placements) {
            for (x, y, px) in img.enumerate_pixels() {
                assert_eq!(atlas.image.get_pixel(p.x + x, p.y + y), px);
            }
        }
    }

    #[test]
    fn output_is_independent_of_input_order() {
        let owned = random_sprites(200, 1, 48, 1234);
        // Some equal sizes so the name tie-break matters.
        let mut owned = owned;
        for i in 0..20 {
            owned.push((format!("frame_{i:02}"), sprite(500 + i, 16, 16)));
        }
        for o in [
            opts(1, 1),
            opts(0, 0),
            AtlasOptions {
                power_of_two: true,
                ..opts(2, 1)
            },
        ] {
            let sprites = refs(&owned);
            let base = pack(&sprites, &o).expect("fits");
            let mut rng = Rng(42);
            for _ in 0..4 {
                let mut shuffled = sprites.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
                let other = pack(&shuffled, &o).expect("fits");
                assert_eq!(other.image.dimensions(), base.image.dimensions());
                assert_eq!(other.image.as_raw(), base.image.as_raw());
                for ((name, _), p) in shuffled.iter().zip(&other.placements) {
                    let k = sprites
                        .iter()
                        .position(|(n, _)| n == name)
                        .expect("present");
                    assert_eq!(*p, base.placements[k], "{name}");
                }
            }
        }
    }

    #[test]
    fn sprite_larger_than_max_is_named() {
        let small = sprite(1, 10, 10);
        let wide = sprite(2, 100, 5);
        let sprites = [("small", &small), ("wide", &wide)];
        let o = AtlasOptions {
            max_width: 64,
            max_height: 64,
            ..opts(0, 1)
        };
        let err = pack(&sprites, &o).expect_err("too wide");
        assert!(
            matches!(&err, AtlasError::DoesNotFit { sprite, width: 100, height: 5, max_width: 64, max_height: 64, .. } if sprite == "wide"),
            "{err:?}"
        );
        // Extrusion counts: 64 wide + 2*1 extrusion does not fit into 64.
        let edge = sprite(3, 64, 8);
        let err = pack(&[("edge", &edge)], &o).expect_err("extrusion too wide");
        assert!(matches!(&err, AtlasError::DoesNotFit { sprite, .. } if sprite == "edge"));
        let msg = err.to_string();
        assert!(
            msg.contains("edge") && msg.contains("64x64") && msg.contains("split"),
            "{msg}"
        );
    }

    #[test]
    fn too_many_sprites_names_first_unplaced() {
        // Five 30x30 sprites, only four fit in 64x64; the order is by name.
        let imgs: Vec<RgbaImage> = (0..5).map(|i| sprite(i, 30, 30)).collect();
        let names = ["e", "d", "c", "b", "a"];
        let sprites: Vec<(&str, &RgbaImage)> = names.iter().copied().zip(&imgs).collect();
        let o = AtlasOptions {
            max_width: 64,
            max_height: 64,
            ..opts(2, 0)
        };
        let err = pack(&sprites, &o).expect_err("too many");
        assert_eq!(
            err,
            AtlasError::DoesNotFit {
                sprite: "e".into(),
                width: 30,
                height: 30,
                max_width: 64,
                max_height: 64,
                needed_area_hint: 5 * 32 * 32,
            }
        );
        // Four fit exactly: 30 + 2 + 30 = 62 <= 64.
        let atlas = pack(&sprites[1..], &o).expect("fits");
        assert_eq!(atlas.image.dimensions(), (62, 62));
    }

    #[test]
    fn single_sprite_fills_the_atlas() {
        let img = sprite(7, 13, 9);
        let sprites = [("only", &img)];
        let o = AtlasOptions::default();
        let atlas = pack(&sprites, &o).expect("fits");
        assert_eq!(atlas.image.dimensions(), (15, 11));
        assert_eq!(
            atlas.placements,
            vec![Placement {
                x: 1,
                y: 1,
                width: 13,
                height: 9
            }]
        );
        check_atlas(&sprites, &o, &atlas);
    }

    #[test]
    fn equal_frames_form_a_tight_grid() {
        let imgs: Vec<RgbaImage> = (0..16).map(|i| sprite(i, 32, 32)).collect();
        let names: Vec<String> = (0..16).map(|i| format!("walk_{i:02}")).collect();
        let sprites: Vec<(&str, &RgbaImage)> =
            names.iter().map(String::as_str).zip(&imgs).collect();
        let o = opts(0, 0);
        let atlas = pack(&sprites, &o).expect("fits");
        let (w, h) = atlas.image.dimensions();
        let occupancy = f64::from(16 * 32 * 32) / f64::from(w * h);
        assert!(occupancy >= 0.8, "{w}x{h}");
        assert_eq!((w, h), (128, 128));
        check_atlas(&sprites, &o, &atlas);

        // With padding and extrusion the grid is 4 x (32 + 2) + 3 gaps.
        let o = AtlasOptions::default();
        let atlas = pack(&sprites, &o).expect("fits");
        assert_eq!(atlas.image.dimensions(), (139, 139));
        check_atlas(&sprites, &o, &atlas);
    }

    #[test]
    fn power_of_two_sizes() {
        let owned = random_sprites(57, 3, 37, 5);
        let sprites = refs(&owned);
        for (p, e) in [(0, 0), (1, 1), (4, 2)] {
            let o = AtlasOptions {
                power_of_two: true,
                ..opts(p, e)
            };
            let atlas = pack(&sprites, &o).expect("fits");
            let (w, h) = atlas.image.dimensions();
            assert!(w.is_power_of_two() && h.is_power_of_two(), "{w}x{h}");
            check_atlas(&sprites, &o, &atlas);
        }
        // The power-of-two limit is the largest power of two within the max.
        let img = sprite(1, 70, 10);
        let o = AtlasOptions {
            power_of_two: true,
            max_width: 100,
            max_height: 100,
            ..opts(0, 0)
        };
        let err = pack(&[("s", &img)], &o).expect_err("needs 128");
        assert!(
            matches!(err, AtlasError::DoesNotFit { max_width: 64, .. }),
            "{err:?}"
        );
        let img = sprite(1, 60, 10);
        let atlas = pack(&[("s", &img)], &o).expect("fits");
        assert_eq!(atlas.image.dimensions(), (64, 16));
    }

    #[test]
    fn default_options() {
        let o = AtlasOptions::default();
        assert_eq!((o.padding, o.extrude), (1, 1));
        assert_eq!(
            (o.max_width, o.max_height, o.power_of_two),
            (4096, 4096, false)
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let a = sprite(1, 4, 4);
        let b = sprite(2, 8, 8);
        let err = pack(&[("x", &a), ("y", &a), ("x", &b)], &AtlasOptions::default());
        assert_eq!(err.expect_err("dup"), AtlasError::DuplicateName("x".into()));
    }

    #[test]
    fn empty_input_gives_transparent_1x1() {
        let atlas = pack(&[], &AtlasOptions::default()).expect("empty is fine");
        assert_eq!(atlas.image.dimensions(), (1, 1));
        assert_eq!(*atlas.image.get_pixel(0, 0), Rgba([0, 0, 0, 0]));
        assert!(atlas.placements.is_empty());
    }

    #[test]
    fn zero_size_sprites_take_no_space() {
        let zero = RgbaImage::new(0, 5);
        let none = RgbaImage::new(0, 0);
        let real = sprite(1, 3, 3);
        let sprites = [("z", &zero), ("r", &real), ("n", &none)];
        let o = AtlasOptions::default();
        let atlas = pack(&sprites, &o).expect("fits");
        assert_eq!(atlas.image.dimensions(), (5, 5));
        assert_eq!(
            atlas.placements[0],
            Placement {
                x: 0,
                y: 0,
                width: 0,
                height: 5
            }
        );
        assert_eq!(atlas.placements[2].width, 0);
        check_atlas(&sprites, &o, &atlas);
        // Only zero-size sprites: like empty input.
        let atlas = pack(&[("z", &zero)], &o).expect("fits");
        assert_eq!(atlas.image.dimensions(), (1, 1));
    }

    #[test]
    fn extreme_options_do_not_panic() {
        let img = sprite(1, 2, 2);
        let sprites = [("a", &img), ("b", &img)];
        let huge = AtlasOptions {
            padding: u32::MAX,
            extrude: u32::MAX,
            max_width: u32::MAX,
            max_height: u32::MAX,
            power_of_two: false,
        };
        assert!(matches!(
            pack(&sprites, &huge),
            Err(AtlasError::DoesNotFit { .. })
        ));
        let zero = AtlasOptions {
            max_width: 0,
            max_height: 0,
            ..AtlasOptions::default()
        };
        assert!(pack(&sprites, &zero).is_err());
        let pow2_zero = AtlasOptions {
            power_of_two: true,
            ..zero
        };
        assert!(pack(&sprites, &pow2_zero).is_err());
        let big_pad = AtlasOptions {
            padding: u32::MAX,
            extrude: 0,
            max_width: u32::MAX,
            max_height: u32::MAX,
            power_of_two: true,
        };
        // Two 2x2 sprites with 4 billion px between them cannot share an atlas
        // within u32, but one row + one column of padding is never needed.
        let one = pack(&sprites[..1], &big_pad).expect("single sprite needs no padding");
        assert_eq!(one.image.dimensions(), (2, 2));
    }
}
