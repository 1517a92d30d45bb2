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

use std::time::{Duration, Instant};

#[path = "atlas/corpora.rs"]
mod corpora;
#[path = "atlas/packers.rs"]
mod packers;
#[path = "atlas/search.rs"]
mod search;
#[path = "atlas/validate.rs"]
mod validate;

use corpora::{Corpus, corpora};
use packers::{PACKERS, Strategy};
use search::total_area;
use validate::validate;

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
