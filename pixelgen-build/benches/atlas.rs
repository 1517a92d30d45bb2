//! How tightly, and how fast, pixelgen packs sprite rects into one atlas,
//! beside the Rust rect packers a Bevy user could reach for.
//!
//! For seeded corpora of sprite sizes (never rotated) and each packer, it
//! prints the **smallest single atlas** the packer finds, its **occupancy**
//! (sum of rect areas / atlas area) and the **time** the whole search took
//! (wall clock, median of a few runs). Every packing is validated: all rects
//! placed, inside the atlas, none overlapping; a packer that fails that shows
//! "invalid" instead of numbers.
//!
//! * pixelgen searches its own smallest atlas (`pack_pixelgen`).
//! * Peers that pack into a given bin get one generic size search (`smallest`),
//!   and the atlas counted is the bounding box of what they placed.
//! * `bevy TextureAtlasBuilder` is rectangle-pack under Bevy 0.19's own size
//!   policy (`bevy_policy`), uncropped: what a Bevy user actually gets.
//! * Peers that place in input order (texture_packer, binpack2d, etagere) get
//!   the rects tall first; crunch and rectangle-pack sort by themselves.
//! * A peer whose one attempt at a generous bin takes over 2 s is skipped
//!   (crunch on 10k rects); the rest run the full search, which can take a
//!   minute on 10k rects (rectangle-pack).
//!
//! ```text
//! cargo bench -p pixelgen-build --bench atlas                  # seeds 1 and 2
//! cargo bench -p pixelgen-build --bench atlas -- --seed 7      # one seed
//! cargo bench -p pixelgen-build --bench atlas -- --quick       # one run each
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pixelgen_build::atlas::{LayoutOptions, pack_rects};

/// Sprite sizes `(width, height)`.
type Sizes = [(u32, u32)];

/// Packs `sizes` into one `width x height` bin; `None` if something did not
/// fit. The result's size is the bin's.
type BinFn = fn(&Sizes, u32, u32) -> Option<Packing>;

/// No atlas side may exceed this, for pixelgen and the search alike.
const MAX_SIDE: u32 = 4096;
/// Bevy's `max_size` default is 2048; 4096 here so the 10k row fits too.
const BEVY_MAX_SIDE: u32 = 4096;
/// Bevy's `initial_size` default.
const BEVY_INITIAL_SIDE: u32 = 256;
/// A peer whose single attempt at a generous bin takes longer is skipped.
const SKIP_AFTER: Duration = Duration::from_secs(2);
/// Position of a rect a packer did not place (or placed at a wrong size).
const UNPLACED: (u32, u32) = (u32::MAX, u32::MAX);

/// Where each rect went, in input order, and the atlas size.
#[derive(Debug, Clone)]
struct Packing {
    width: u32,
    height: u32,
    positions: Vec<(u32, u32)>,
}

impl Packing {
    fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The bounding box of the placed rects.
    fn bounding_box(&self, sizes: &Sizes) -> (u32, u32) {
        let placed = self
            .positions
            .iter()
            .zip(sizes)
            .filter(|(p, _)| **p != UNPLACED);
        placed.fold((0, 0), |(w, h), (&(x, y), &(sw, sh))| {
            (w.max(x + sw), h.max(y + sh))
        })
    }

    /// Shrinks the atlas to the bounding box of the placed rects.
    fn cropped(mut self, sizes: &Sizes) -> Self {
        (self.width, self.height) = self.bounding_box(sizes);
        self
    }
}

// ---------------------------------------------------------------------------
// Packers
// ---------------------------------------------------------------------------

/// How a packer finds its smallest atlas.
#[derive(Clone, Copy)]
enum Strategy {
    /// The packer searches by itself.
    Own(fn(&Sizes) -> Option<Packing>),
    /// The harness's generic size search around a fixed-bin packer.
    Smallest(BinFn),
    /// Bevy's TextureAtlasBuilder size policy around a fixed-bin packer.
    Bevy(BinFn),
}

const PACKERS: &[(&str, Strategy)] = &[
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

// ---------------------------------------------------------------------------
// Size searches
// ---------------------------------------------------------------------------

/// The generic size search for fixed-bin packers.
///
/// For ~16 candidate widths (log-spaced from the widest rect to 2*sqrt(area),
/// linear around sqrt(area), and sqrt(area) itself) it finds the least bin
/// height that packs: galloping up from the area bound, then bisecting to
/// 1 px (1/256 of the height for tall bins). The atlas counted is the bounding
/// box of the placed rects, minimised over every successful attempt.
///
/// Packers are not monotone in bin size (a bin 1 px taller can fail where a
/// smaller one succeeded), so this is a good search, not a proof of the
/// packer's best.
fn smallest(sizes: &Sizes, fit: BinFn) -> Option<Packing> {
    let mut best: Option<Packing> = None;
    for width in candidate_widths(sizes) {
        for p in least_height(sizes, fit, width) {
            let p = p.cropped(sizes);
            // Equal areas: the squarer atlas.
            let key = |p: &Packing| (p.area(), p.width.max(p.height), p.width);
            if best.as_ref().is_none_or(|b| key(&p) < key(b)) {
                best = Some(p);
            }
        }
    }
    best
}

fn total_area(sizes: &Sizes) -> u64 {
    sizes
        .iter()
        .map(|&(w, h)| u64::from(w) * u64::from(h))
        .sum()
}

fn candidate_widths(sizes: &Sizes) -> Vec<u32> {
    let widest = sizes.iter().map(|s| s.0).max().unwrap_or(1).max(1);
    let side = (total_area(sizes) as f64).sqrt();
    // The same aspect bound as pixelgen's own search: no strips beyond ~4:1.
    let widest = widest.max((side / 2.0) as u32);
    let lo = f64::from(widest);
    let hi = (2.0 * side).max(lo);
    let mut widths: Vec<f64> = (0..6)
        .map(|k| lo * (hi / lo).powf(f64::from(k) / 5.0))
        .collect();
    widths.extend((0..9).map(|k| side * (0.7 + 0.7 * f64::from(k) / 8.0)));
    widths.push(side);
    let mut widths: Vec<u32> = widths
        .into_iter()
        .map(|w| (w.ceil() as u32).clamp(widest, MAX_SIDE))
        .collect();
    widths.sort_unstable();
    widths.dedup();
    widths
}

/// Every successful packing met while searching the least height for `width`.
fn least_height(sizes: &Sizes, fit: BinFn, width: u32) -> Vec<Packing> {
    let tallest = sizes.iter().map(|s| s.1).max().unwrap_or(1).max(1);
    let area_bound = total_area(sizes)
        .div_ceil(u64::from(width))
        .min(u64::from(MAX_SIDE)) as u32;
    let start = area_bound.max(tallest);
    let mut found = Vec::new();
    // Gallop: `fail` never packs (below the bounds, or tried), `ok` packs.
    let (mut fail, mut h, mut step) = (start - 1, start, (start / 32).max(1));
    let mut ok = loop {
        if let Some(p) = fit(sizes, width, h) {
            found.push(p);
            break h;
        }
        if h == MAX_SIDE {
            return found;
        }
        fail = h;
        h = h.saturating_add(step).min(MAX_SIDE);
        step *= 2;
    };
    // Bisect.
    while ok - fail > (ok / 256).max(1) {
        let mid = fail + (ok - fail) / 2;
        match fit(sizes, width, mid) {
            Some(p) => {
                found.push(p);
                ok = mid;
            }
            None => fail = mid,
        }
    }
    found
}

/// Bevy 0.19 `TextureAtlasBuilder::build`: try `initial_size` (256x256) and,
/// on failure, double both sides (clamped to `max_size`) until the max was
/// tried. The atlas is that bin, uncropped. Like Bevy, the start does not
/// depend on the largest rect: a bin too small for it just fails and doubles.
fn bevy_policy(sizes: &Sizes, fit: BinFn) -> Option<Packing> {
    let (mut w, mut h) = (BEVY_INITIAL_SIDE, BEVY_INITIAL_SIDE);
    loop {
        let last = w == BEVY_MAX_SIDE && h == BEVY_MAX_SIDE;
        if let Some(p) = fit(sizes, w, h) {
            return Some(p);
        }
        if last {
            return None;
        }
        w = (w * 2).min(BEVY_MAX_SIDE);
        h = (h * 2).min(BEVY_MAX_SIDE);
    }
}

impl Strategy {
    fn run(self, sizes: &Sizes) -> Option<Packing> {
        match self {
            Strategy::Own(f) => f(sizes),
            Strategy::Smallest(fit) => smallest(sizes, fit),
            Strategy::Bevy(fit) => bevy_policy(sizes, fit),
        }
    }

    /// Time of one attempt at a generous bin (1.5*sqrt(area) square);
    /// `None` for packers that must always run.
    fn probe(self, sizes: &Sizes) -> Option<Duration> {
        let fit = match self {
            Strategy::Own(_) => return None,
            Strategy::Smallest(fit) | Strategy::Bevy(fit) => fit,
        };
        let widest = sizes.iter().map(|s| s.0.max(s.1)).max().unwrap_or(1);
        let side = ((1.5 * (total_area(sizes) as f64).sqrt()) as u32).clamp(widest, MAX_SIDE);
        let start = Instant::now();
        let _ = fit(sizes, side, side);
        Some(start.elapsed())
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// All rects placed at their size, inside the atlas, none overlapping.
fn validate(sizes: &Sizes, p: &Packing) -> Result<(), String> {
    if p.positions.len() != sizes.len() {
        return Err(format!(
            "{} positions for {} rects",
            p.positions.len(),
            sizes.len()
        ));
    }
    let (aw, ah) = (p.width as usize, p.height as usize);
    let mut taken = vec![false; aw * ah];
    for (i, (&(x, y), &(w, h))) in p.positions.iter().zip(sizes).enumerate() {
        if (x, y) == UNPLACED {
            return Err(format!("rect {i} not placed (or at a wrong size)"));
        }
        let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
        if x + w > aw || y + h > ah {
            return Err(format!("rect {i} outside the atlas"));
        }
        for row in y..y + h {
            let cells = &mut taken[row * aw + x..row * aw + x + w];
            if cells.iter().any(|&t| t) {
                return Err(format!("rect {i} overlaps another"));
            }
            cells.fill(true);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Corpora
// ---------------------------------------------------------------------------

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (modulo bias is irrelevant here).
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }

    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

struct Corpus {
    name: &'static str,
    sizes: Vec<(u32, u32)>,
    /// Timed runs (median reported).
    runs: usize,
}

fn corpora(seed: u64, quick: bool) -> Vec<Corpus> {
    let runs = if quick { 1 } else { 5 };
    let rng = |k: u64| Rng(seed.wrapping_mul(0x1000_0000_01B3) ^ (k << 56));
    vec![
        Corpus {
            name: "animation sets",
            sizes: animation_sets(&mut rng(1)),
            runs,
        },
        Corpus {
            name: "mixed items",
            sizes: uniform(&mut rng(2), 300, 8, 64),
            runs,
        },
        Corpus {
            name: "tiles",
            sizes: tiles(&mut rng(3)),
            runs,
        },
        Corpus {
            name: "mixed with few large",
            sizes: few_large(&mut rng(4)),
            runs,
        },
        Corpus {
            name: "10k mixed",
            sizes: uniform(&mut rng(5), 10_000, 4, 32),
            runs: 1,
        },
    ]
}

/// 30 characters, each 4..=12 equal frames of a mostly square-ish size.
fn animation_sets(rng: &mut Rng) -> Vec<(u32, u32)> {
    const SIDES: [u32; 5] = [16, 24, 32, 48, 64];
    let mut sizes = Vec::new();
    for _ in 0..30 {
        let i = rng.range(0, 4) as usize;
        // Same side 3 times in 5, else one step up or down.
        let j = match rng.range(0, 4) {
            0 => i.saturating_sub(1),
            1 => (i + 1).min(4),
            _ => i,
        };
        let frames = rng.range(4, 12) as usize;
        sizes.extend(std::iter::repeat_n((SIDES[i], SIDES[j]), frames));
    }
    sizes
}

fn uniform(rng: &mut Rng, n: usize, lo: u32, hi: u32) -> Vec<(u32, u32)> {
    (0..n)
        .map(|_| (rng.range(lo, hi), rng.range(lo, hi)))
        .collect()
}

/// 400 16x16, 40 16x32 and 20 32x32 tiles in a seeded order.
fn tiles(rng: &mut Rng) -> Vec<(u32, u32)> {
    let mut sizes: Vec<(u32, u32)> = std::iter::repeat_n((16, 16), 400)
        .chain(std::iter::repeat_n((16, 32), 40))
        .chain(std::iter::repeat_n((32, 32), 20))
        .collect();
    rng.shuffle(&mut sizes);
    sizes
}

/// 200 rects of 8..=48 plus 4 of 128..=384 per side, in a seeded order.
fn few_large(rng: &mut Rng) -> Vec<(u32, u32)> {
    let mut sizes = uniform(rng, 200, 8, 48);
    sizes.extend(uniform(rng, 4, 128, 384));
    rng.shuffle(&mut sizes);
    sizes
}

// ---------------------------------------------------------------------------
// Measuring and printing
// ---------------------------------------------------------------------------

enum Outcome {
    Skipped(Duration),
    NoFit(Duration),
    Invalid(Packing, String, Duration),
    Valid(Packing, Duration),
}

fn measure(strategy: Strategy, sizes: &Sizes, runs: usize) -> Outcome {
    if let Some(probe) = strategy.probe(sizes).filter(|&t| t > SKIP_AFTER) {
        return Outcome::Skipped(probe);
    }
    let mut times = Vec::with_capacity(runs);
    let mut result = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        result = std::hint::black_box(strategy.run(std::hint::black_box(sizes)));
        times.push(start.elapsed());
    }
    times.sort_unstable();
    let time = times[times.len() / 2];
    match result {
        None => Outcome::NoFit(time),
        Some(p) => match validate(sizes, &p) {
            Ok(()) => Outcome::Valid(p, time),
            Err(why) => Outcome::Invalid(p, why, time),
        },
    }
}

fn ms(t: Duration) -> String {
    let ms = t.as_secs_f64() * 1e3;
    match ms {
        ms if ms < 10.0 => format!("{ms:.2}"),
        ms if ms < 1000.0 => format!("{ms:.1}"),
        ms => format!("{ms:.0}"),
    }
}

fn occupancy(sizes: &Sizes, p: &Packing) -> String {
    format!(
        "{:.2} %",
        100.0 * total_area(sizes) as f64 / p.area() as f64
    )
}

/// Prints one corpus's rows and returns its verdict line.
fn report(corpus: &Corpus, only: Option<&str>) -> String {
    let sizes = &corpus.sizes;
    let outcomes: Vec<(&str, Outcome)> = PACKERS
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| name.contains(o)))
        .map(|&(name, s)| (name, measure(s, sizes, corpus.runs)))
        .collect();
    let valid_area = |o: &Outcome| match o {
        Outcome::Valid(p, _) => Some(p.area()),
        _ => None,
    };
    let best = outcomes.iter().filter_map(|(_, o)| valid_area(o)).min();
    for (name, outcome) in &outcomes {
        let (size, occ, time) = match outcome {
            Outcome::Skipped(probe) => (
                "—".to_owned(),
                format!("skipped (>{} s)", SKIP_AFTER.as_secs()),
                format!("one try: {}", ms(*probe)),
            ),
            Outcome::NoFit(t) => ("—".to_owned(), format!("no fit ≤ {MAX_SIDE}"), ms(*t)),
            Outcome::Invalid(p, why, t) => (
                format!("{}x{}", p.width, p.height),
                format!("invalid: {why}"),
                ms(*t),
            ),
            Outcome::Valid(p, t) => {
                let occ = occupancy(sizes, p);
                let occ = if Some(p.area()) == best {
                    format!("**{occ}**")
                } else {
                    occ
                };
                (format!("{}x{}", p.width, p.height), occ, ms(*t))
            }
        };
        println!(
            "| {} | {} | {name} | {size} | {occ} | {time} |",
            corpus.name,
            sizes.len()
        );
    }
    verdict(corpus, &outcomes)
}

fn verdict(corpus: &Corpus, outcomes: &[(&str, Outcome)]) -> String {
    let sizes = &corpus.sizes;
    let valid = |o: &Outcome| match o {
        Outcome::Valid(p, _) => Some(p.clone()),
        _ => None,
    };
    let own = outcomes
        .iter()
        .find(|(n, _)| *n == "pixelgen")
        .and_then(|(_, o)| valid(o));
    let peer = outcomes
        .iter()
        .filter(|(n, _)| *n != "pixelgen")
        .filter_map(|(n, o)| valid(o).map(|p| (*n, p)))
        .min_by_key(|(_, p)| p.area());
    match (own, peer) {
        (Some(own), Some((name, p))) => format!(
            "- {}: pixelgen {} vs best peer {name} {}: pixelgen >= best peer: **{}**",
            corpus.name,
            occupancy(sizes, &own),
            occupancy(sizes, &p),
            if own.area() <= p.area() { "yes" } else { "no" }
        ),
        (None, _) => format!("- {}: pixelgen failed: **no**", corpus.name),
        (Some(_), None) => format!("- {}: no valid peer: **yes**", corpus.name),
    }
}

struct Args {
    seeds: Vec<u64>,
    quick: bool,
    /// Run only packers whose name contains this (`--only pixelgen`).
    only: Option<String>,
}

/// `--seed N` (repeatable) and `--quick`; anything else (cargo's `--bench`)
/// is ignored.
fn args() -> Args {
    let mut args = Args {
        seeds: Vec::new(),
        quick: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--only" => args.only = it.next(),
            "--seed" => args
                .seeds
                .extend(it.next().and_then(|s| s.parse::<u64>().ok())),
            _ => {}
        }
    }
    if args.seeds.is_empty() {
        args.seeds = vec![1, 2];
    }
    args
}

fn main() {
    let args = args();
    println!("# Atlas packing: smallest single atlas, no rotation\n");
    println!(
        "Occupancy = rect area / atlas area. Peers: generic size search, atlas = bounding box. \
         bevy TextureAtlasBuilder: rectangle-pack from {BEVY_INITIAL_SIDE}² doubling to \
         {BEVY_MAX_SIDE}², uncropped. Time: whole search, median of {} run(s) (10k mixed: 1); \
         a peer whose one try at a generous bin exceeds {} s is skipped.\n",
        if args.quick { 1 } else { 5 },
        SKIP_AFTER.as_secs()
    );
    for &seed in &args.seeds {
        println!("## seed {seed}\n");
        println!("| corpus | rects | packer | atlas WxH | occupancy | time ms |");
        println!("|---|---|---|---|---|---|");
        let verdicts: Vec<String> = corpora(seed, args.quick)
            .iter()
            .map(|c| report(c, args.only.as_deref()))
            .collect();
        println!();
        for v in verdicts {
            println!("{v}");
        }
        println!();
    }
}
