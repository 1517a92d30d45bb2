//! The packers compared: pixelgen's own, and each peer as a fixed-bin packer (`*_bin`),
//! with how the harness finds each one's smallest atlas (`PACKERS`).

use std::collections::BTreeMap;

use pixelgen_build::atlas::{LayoutOptions, pack_rects};

use super::{BinFn, MAX_SIDE, Packing, Sizes, UNPLACED};

/// How a packer finds its smallest atlas.
#[derive(Clone, Copy)]
pub(super) enum Strategy {
    /// The packer searches by itself.
    Own(fn(&Sizes) -> Option<Packing>),
    /// The harness's generic size search around a fixed-bin packer.
    Smallest(BinFn),
    /// Bevy's TextureAtlasBuilder size policy around a fixed-bin packer.
    Bevy(BinFn),
}

pub(super) const PACKERS: &[(&str, Strategy)] = &[
    ("pixelgen", Strategy::Own(pixelgen)),
    ("rectangle-pack", Strategy::Smallest(rectangle_pack_bin)),
    (
        "bevy TextureAtlasBuilder",
        Strategy::Bevy(rectangle_pack_bin),
    ),
    ("crunch", Strategy::Smallest(crunch_bin)),
    (
        "texture_packer skyline",
        Strategy::Smallest(texture_packer_bin),
    ),
    (
        "binpack2d MaxRects BSSF",
        Strategy::Smallest(binpack2d_bssf_bin),
    ),
    (
        "binpack2d MaxRects best of BSSF/BLSF/BAF/BL",
        Strategy::Smallest(binpack2d_best_bin),
    ),
    ("etagere shelf", Strategy::Smallest(etagere_bin)),
    ("etagere bucketed", Strategy::Smallest(etagere_bucketed_bin)),
];

fn pixelgen(sizes: &Sizes) -> Option<Packing> {
    pack_pixelgen(sizes, MAX_SIDE)
}

/// pixelgen's own rect-level packer (`pack_rects`), with its own size search.
fn pack_pixelgen(sizes: &Sizes, max: u32) -> Option<Packing> {
    let options = LayoutOptions {
        padding: 0,
        max_width: max,
        max_height: max,
        power_of_two: false,
    };
    let layout = pack_rects(sizes, &options).ok()?;
    Some(Packing {
        width: layout.width,
        height: layout.height,
        positions: layout.positions,
    })
}

/// `position`, or [`UNPLACED`] when the packer reports another size (so
/// validation flags it).
fn checked(position: (u32, u32), reported: (u32, u32), size: (u32, u32)) -> (u32, u32) {
    if reported == size { position } else { UNPLACED }
}

/// Indices by (height desc, width desc, index): the order shelf/skyline
/// packers and sequential MaxRects need, since they place in input order.
fn tall_first(sizes: &Sizes) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| {
        (
            std::cmp::Reverse(sizes[i].1),
            std::cmp::Reverse(sizes[i].0),
            i,
        )
    });
    order
}

fn bin_packing(width: u32, height: u32, n: usize) -> Packing {
    Packing {
        width,
        height,
        positions: vec![UNPLACED; n],
    }
}

/// Exactly as Bevy 0.19's TextureAtlasBuilder calls it (input order; it sorts
/// by volume itself).
fn rectangle_pack_bin(sizes: &Sizes, width: u32, height: u32) -> Option<Packing> {
    use rectangle_pack::{
        GroupedRectsToPlace, RectToInsert, TargetBin, contains_smallest_box, pack_rects,
        volume_heuristic,
    };
    let mut rects = GroupedRectsToPlace::<usize>::new();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        rects.push_rect(i, None, RectToInsert::new(w, h, 1));
    }
    let mut bins = BTreeMap::new();
    bins.insert(0, TargetBin::new(width, height, 1));
    let placed = pack_rects(&rects, &mut bins, &volume_heuristic, &contains_smallest_box).ok()?;
    let mut out = bin_packing(width, height, sizes.len());
    for (&i, (_, loc)) in placed.packed_locations() {
        out.positions[i] = checked((loc.x(), loc.y()), (loc.width(), loc.height()), sizes[i]);
    }
    Some(out)
}

/// MaxRects; sorts by (area + longest side) itself.
fn crunch_bin(sizes: &Sizes, width: u32, height: u32) -> Option<Packing> {
    use crunch::{Item, Rect, Rotation};
    let items = sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| Item::new(i, w as usize, h as usize, Rotation::None));
    let placed = crunch::pack(Rect::of_size(width as usize, height as usize), items).ok()?;
    let mut out = bin_packing(width, height, sizes.len());
    for item in placed {
        let r = item.rect;
        let reported = (r.w as u32, r.h as u32);
        out.positions[item.data] = checked((r.x as u32, r.y as u32), reported, sizes[item.data]);
    }
    Some(out)
}

/// A frame-only texture: texture_packer reads no pixels with `trim: false`.
#[derive(Clone, Copy)]
struct Blank {
    width: u32,
    height: u32,
}

struct NoPixel;

impl texture_packer::texture::Pixel for NoPixel {
    fn is_transparent(&self) -> bool {
        true
    }
    fn transparency() -> Option<Self> {
        Some(NoPixel)
    }
    fn outline() -> Self {
        NoPixel
    }
}

impl texture_packer::texture::Texture for Blank {
    type Pixel = NoPixel;
    fn width(&self) -> u32 {
        self.width
    }
    fn height(&self) -> u32 {
        self.height
    }
    fn get(&self, _x: u32, _y: u32) -> Option<NoPixel> {
        None
    }
    fn set(&mut self, _x: u32, _y: u32, _val: NoPixel) {}
}

/// Skyline, in input order, so tall first. Its bin needs one spare row: a
/// rect flush with the bottom edge is refused (`can_pack` wants
/// `y + h <= max_height - 1`); the search's cropping makes that row free.
fn texture_packer_bin(sizes: &Sizes, width: u32, height: u32) -> Option<Packing> {
    use texture_packer::{TexturePacker, TexturePackerConfig};
    let config = TexturePackerConfig {
        max_width: width,
        max_height: height,
        allow_rotation: false,
        force_max_dimensions: true,
        border_padding: 0,
        texture_padding: 0,
        texture_extrusion: 0,
        trim: false,
        texture_outlines: false,
    };
    let mut packer = TexturePacker::<Blank, usize>::new_skyline(config);
    for i in tall_first(sizes) {
        let (width, height) = sizes[i];
        packer.pack_own(i, Blank { width, height }).ok()?;
    }
    let mut out = bin_packing(width, height, sizes.len());
    for (&i, frame) in packer.get_frames() {
        let f = frame.frame;
        // A rotated frame counts as a wrong size.
        let reported = if frame.rotated { (0, 0) } else { (f.w, f.h) };
        out.positions[i] = checked((f.x, f.y), reported, sizes[i]);
    }
    Some(out)
}

/// Sequential MaxRects with one placement rule, tall first.
fn binpack2d_bin(
    sizes: &Sizes,
    width: u32,
    height: u32,
    rule: binpack2d::maxrects::Heuristic,
) -> Option<Packing> {
    use binpack2d::Dimension;
    use binpack2d::maxrects::MaxRectsBin;
    let mut bin = MaxRectsBin::with_capacity(width as i32, height as i32, sizes.len());
    let mut out = bin_packing(width, height, sizes.len());
    for i in tall_first(sizes) {
        let (w, h) = sizes[i];
        let r = bin.insert(&Dimension::with_id(i as isize, w as i32, h as i32, 0), rule)?;
        let reported = (r.width() as u32, r.height() as u32);
        out.positions[i] = checked((r.x() as u32, r.y() as u32), reported, sizes[i]);
    }
    Some(out)
}

fn binpack2d_bssf_bin(sizes: &Sizes, width: u32, height: u32) -> Option<Packing> {
    binpack2d_bin(
        sizes,
        width,
        height,
        binpack2d::maxrects::Heuristic::BestShortSideFit,
    )
}

/// Every cheap rule on this bin, keeping the smallest bounding box.
/// (ContactPointRule is left out: it scores against every placed rect, which
/// makes it quadratic.)
fn binpack2d_best_bin(sizes: &Sizes, width: u32, height: u32) -> Option<Packing> {
    use binpack2d::maxrects::Heuristic::{
        BestAreaFit, BestLongSideFit, BestShortSideFit, BottomLeftRule,
    };
    [
        BestShortSideFit,
        BestLongSideFit,
        BestAreaFit,
        BottomLeftRule,
    ]
    .into_iter()
    .filter_map(|rule| binpack2d_bin(sizes, width, height, rule))
    .min_by_key(|p| {
        let (w, h) = p.bounding_box(sizes);
        u64::from(w) * u64::from(h)
    })
}

/// etagere allocates in call order into a fixed size, like a dynamic atlas;
/// so it gets the rects tall first (its shelves round heights up a little).
fn etagere_bin(sizes: &Sizes, width: u32, height: u32) -> Option<Packing> {
    let mut atlas = etagere::AtlasAllocator::new(etagere::size2(width as i32, height as i32));
    etagere_fill(sizes, width, height, |s| atlas.allocate(s))
}

fn etagere_bucketed_bin(sizes: &Sizes, width: u32, height: u32) -> Option<Packing> {
    let size = etagere::size2(width as i32, height as i32);
    let mut atlas = etagere::BucketedAtlasAllocator::new(size);
    etagere_fill(sizes, width, height, |s| atlas.allocate(s))
}

fn etagere_fill(
    sizes: &Sizes,
    width: u32,
    height: u32,
    mut allocate: impl FnMut(etagere::Size) -> Option<etagere::Allocation>,
) -> Option<Packing> {
    let mut out = bin_packing(width, height, sizes.len());
    for i in tall_first(sizes) {
        let (w, h) = sizes[i];
        let a = allocate(etagere::size2(w as i32, h as i32))?;
        // The allocation spans the whole (rounded-up) shelf height, so only
        // check that it can hold the rect.
        let r = a.rectangle;
        let fits = r.width() >= w as i32 && r.height() >= h as i32;
        let reported = if fits { (w, h) } else { (0, 0) };
        out.positions[i] = checked((r.min.x as u32, r.min.y as u32), reported, sizes[i]);
    }
    Some(out)
}
