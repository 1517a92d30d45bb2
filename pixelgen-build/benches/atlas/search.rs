//! The size searches around fixed-bin packers: the generic smallest-atlas search, and
//! Bevy's TextureAtlasBuilder policy.

use std::time::{Duration, Instant};

use super::packers::Strategy;
use super::{BEVY_INITIAL_SIDE, BEVY_MAX_SIDE, BinFn, MAX_SIDE, Packing, Sizes};

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

pub(super) fn total_area(sizes: &Sizes) -> u64 {
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
    pub(super) fn run(self, sizes: &Sizes) -> Option<Packing> {
        match self {
            Strategy::Own(f) => f(sizes),
            Strategy::Smallest(fit) => smallest(sizes, fit),
            Strategy::Bevy(fit) => bevy_policy(sizes, fit),
        }
    }

    /// Time of one attempt at a generous bin (1.5*sqrt(area) square);
    /// `None` for packers that must always run.
    pub(super) fn probe(self, sizes: &Sizes) -> Option<Duration> {
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
