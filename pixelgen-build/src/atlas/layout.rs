//! Rect-level packing: sizes in, the smallest atlas (or pages of atlases) out.
//! No pixels here; [`super::pack`] adds trimming, aliasing and rendering.

use super::maxrects::{Heuristic, Kinds, MaxRects, Order, Strategy};

/// Limits and spacing for [`pack_rects`] and [`pack_pages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayoutOptions {
    /// Empty pixels between neighbouring rects (not at the atlas's edges).
    pub padding: u32,
    /// The atlas may not be wider than this.
    pub max_width: u32,
    /// The atlas may not be taller than this.
    pub max_height: u32,
    /// Round the atlas size up to powers of two.
    pub power_of_two: bool,
}

/// Where each rect went in one atlas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RectLayout {
    /// Atlas width: the used extent (rounded up to a power of two if asked).
    pub width: u32,
    pub height: u32,
    /// Top-left corner of each input rect, in input order. Empty rects (zero
    /// width or height) are at (0, 0) and take no space.
    pub positions: Vec<(u32, u32)>,
}

/// One page of a multipage layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The rects on this page (input indices, ascending).
    pub rects: Vec<usize>,
    /// Their layout; `layout.positions[k]` is where `rects[k]` went.
    pub layout: RectLayout,
}

/// Why rects could not be laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Rect `index` is larger than the maximum size by itself, or (for
    /// [`pack_rects`]) no room was left for it; for [`pack_pages`], its group
    /// does not fit on one page.
    #[error("rect {index} does not fit")]
    DoesNotFit { index: usize },
}

/// Packs `sizes` into the smallest atlas it finds within the limits, never
/// rotating. The layout depends only on the sizes in input order and the
/// options: not on timing or thread count.
///
/// How: MaxRects with global best fit (short side, long side and area scores)
/// over a set of atlas widths, each with the least height found by bisection;
/// the smallest area wins (then the squarer, then the narrower). Inputs of
/// thousands of rects try fewer widths and scores, to stay fast.
pub fn pack_rects(
    sizes: &[(u32, u32)],
    options: &LayoutOptions,
) -> Result<RectLayout, LayoutError> {
    pack_rects_with_threads(sizes, options, available_threads())
}

/// [`pack_rects`] on at most `threads` threads (tests check that it does not matter).
pub(super) fn pack_rects_with_threads(
    sizes: &[(u32, u32)],
    options: &LayoutOptions,
    threads: usize,
) -> Result<RectLayout, LayoutError> {
    let problem = Problem::new(sizes, options, 0..sizes.len())?;
    let best = problem
        .search(threads)
        .ok_or_else(|| LayoutError::DoesNotFit {
            index: problem.first_misfit(),
        })?;
    Ok(problem.finish(&best, sizes.len()))
}

/// Packs `sizes` into as few pages as it can, each as small as it can, when
/// one atlas of the maximum size is not enough. Rects with equal `groups[i]`
/// stay on one page (the frames of one animation, say). Pages are filled in
/// turn: each takes the groups that global best fit places completely into a
/// maximum-size bin, and is then shrunk like [`pack_rects`].
///
/// # Panics
///
/// If `groups` and `sizes` differ in length.
pub fn pack_pages(
    sizes: &[(u32, u32)],
    groups: &[usize],
    options: &LayoutOptions,
) -> Result<Vec<Page>, LayoutError> {
    assert_eq!(sizes.len(), groups.len(), "one group per rect");
    let empty = |i: &usize| sizes[*i].0 == 0 || sizes[*i].1 == 0;
    let mut left: Vec<usize> = (0..sizes.len()).filter(|i| !empty(i)).collect();
    let mut pages = Vec::new();
    loop {
        let problem = Problem::new(sizes, options, left.iter().copied())?;
        if let Some(best) = problem.search(available_threads()) {
            pages.push(problem.page(&best, &left));
            break;
        }
        // Fill one maximum-size bin; keep only the groups placed completely.
        let out = problem.fill(left.iter().copied());
        let mut taken: Vec<usize> = groups_placed(&left, groups, &out);
        if taken.is_empty() {
            // Global best fit scattered every group: start from the first.
            taken.push(groups[left[0]]);
        }
        grow(&problem, &left, groups, &mut taken);
        let page = loop {
            let members: Vec<usize> = left
                .iter()
                .copied()
                .filter(|&i| taken.binary_search(&groups[i]).is_ok())
                .collect();
            let sub = Problem::new(sizes, options, members.iter().copied())?;
            if let Some(best) = sub.search(available_threads()) {
                break sub.page(&best, &members);
            }
            if let [group] = taken[..] {
                // Not even one group fits a page by itself: name its first rect.
                let index = members.first().copied().unwrap_or(left[0]);
                debug_assert_eq!(groups[index], group);
                return Err(LayoutError::DoesNotFit { index });
            }
            // Repacking alone can fail where the fill pass succeeded (MaxRects
            // is not monotone): give up the last group and try again.
            taken.pop();
        };
        left.retain(|i| page.rects.binary_search(i).is_err());
        pages.push(page);
    }
    // Empty rects take no space: each joins its group's page (or the first),
    // so that a group never spans pages.
    for i in (0..sizes.len()).filter(empty) {
        let home = pages
            .iter()
            .position(|p| p.rects.iter().any(|&r| groups[r] == groups[i]))
            .unwrap_or(0);
        let page = &mut pages[home];
        let at = page.rects.partition_point(|&r| r < i);
        page.rects.insert(at, i);
        page.layout.positions.insert(at, (0, 0));
    }
    Ok(pages)
}

/// Adds the groups of `left` not yet in `taken` (sorted) one at a time while
/// one maximum-size pack still holds them all; stops after a few misses,
/// which keeps a page with thousands of candidate groups fast.
fn grow(problem: &Problem, left: &[usize], groups: &[usize], taken: &mut Vec<usize>) {
    const MISSES: usize = 8;
    let mut candidates: Vec<usize> = left.iter().map(|&i| groups[i]).collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates.retain(|g| taken.binary_search(g).is_err());
    let mut misses = 0;
    for group in candidates {
        let at = taken.partition_point(|&g| g < group);
        taken.insert(at, group);
        let members: Vec<usize> = left
            .iter()
            .copied()
            .filter(|&i| taken.binary_search(&groups[i]).is_ok())
            .collect();
        let out = problem.fill(members.iter().copied());
        if members.iter().any(|&i| out[i].is_none()) {
            taken.remove(at);
            misses += 1;
            if misses == MISSES {
                break;
            }
        }
    }
}

/// Groups all of whose rects in `left` were placed, sorted.
fn groups_placed(left: &[usize], groups: &[usize], out: &[Option<(u64, u64)>]) -> Vec<usize> {
    let mut all: Vec<usize> = left.iter().map(|&i| groups[i]).collect();
    all.sort_unstable();
    all.dedup();
    let mut missing: Vec<usize> = left
        .iter()
        .filter(|&&i| out[i].is_none())
        .map(|&i| groups[i])
        .collect();
    missing.sort_unstable();
    all.retain(|g| missing.binary_search(g).is_err());
    all
}

/// A set of rects to pack, in bin units: each cell is its rect plus the
/// padding on its right and bottom, and the bin is the maximum atlas plus one
/// padding, so the atlas's own right and bottom edges carry no padding.
struct Problem {
    /// Cell size per input index (only `members` matter).
    cells: Vec<(u64, u64)>,
    /// Non-empty rects to place.
    members: Vec<usize>,
    pad: u64,
    bin_w: u64,
    bin_h: u64,
    pow2: bool,
    /// Total cell area.
    area: u64,
}

/// The best layout found: atlas size and each cell's corner (by input index).
#[derive(Debug, Clone)]
struct Found {
    width: u64,
    height: u64,
    corners: Vec<Option<(u64, u64)>>,
}

impl Problem {
    fn new(
        sizes: &[(u32, u32)],
        options: &LayoutOptions,
        which: impl IntoIterator<Item = usize>,
    ) -> Result<Problem, LayoutError> {
        let pad = u64::from(options.padding);
        let (max_w, max_h) = if options.power_of_two {
            (
                pow2_floor(options.max_width),
                pow2_floor(options.max_height),
            )
        } else {
            (options.max_width, options.max_height)
        };
        let cells: Vec<(u64, u64)> = sizes
            .iter()
            .map(|&(w, h)| (u64::from(w) + pad, u64::from(h) + pad))
            .collect();
        let members: Vec<usize> = which
            .into_iter()
            .filter(|&i| sizes[i].0 > 0 && sizes[i].1 > 0)
            .collect();
        if let Some(&index) = members
            .iter()
            .find(|&&i| sizes[i].0 > max_w || sizes[i].1 > max_h)
        {
            return Err(LayoutError::DoesNotFit { index });
        }
        let area = members.iter().fold(0u64, |a, &i| {
            a.saturating_add(cells[i].0.saturating_mul(cells[i].1))
        });
        Ok(Problem {
            cells,
            members,
            pad,
            bin_w: u64::from(max_w) + pad,
            bin_h: u64::from(max_h) + pad,
            pow2: options.power_of_two,
            area,
        })
    }

    /// Global best short side fit of `members` into the largest bin: each
    /// cell's corner, or `None` where no room was left (indexed like `cells`).
    fn fill(&self, members: impl IntoIterator<Item = usize>) -> Vec<Option<(u64, u64)>> {
        let kinds = Kinds::new(&self.cells, members);
        let mut out = vec![None; self.cells.len()];
        MaxRects::default().run(&kinds, GLOBAL_SHORT_SIDE, self.bin_w, self.bin_h, &mut out);
        out
    }

    /// The widest and tallest cell, and the greatest common divisor of the
    /// cells' widths and of their heights (sums of cells are multiples of it).
    fn extent(&self, axis: fn(&(u64, u64)) -> u64) -> (u64, u64) {
        self.members.iter().fold((1, 0), |(most, g), &i| {
            let v = axis(&self.cells[i]);
            (most.max(v), gcd(g, v))
        })
    }

    /// The first member (in kind order) that the largest bin leaves out.
    fn first_misfit(&self) -> usize {
        let out = self.fill(self.members.iter().copied());
        let mut order = self.members.clone();
        order.sort_by_key(|&i| {
            (
                std::cmp::Reverse(self.cells[i].1),
                std::cmp::Reverse(self.cells[i].0),
                i,
            )
        });
        order
            .into_iter()
            .find(|&i| out[i].is_none())
            .unwrap_or(self.members.first().copied().unwrap_or(0))
    }

    fn finish(&self, found: &Found, len: usize) -> RectLayout {
        RectLayout {
            width: to_u32(found.width),
            height: to_u32(found.height),
            positions: (0..len)
                .map(|i| {
                    found
                        .corners
                        .get(i)
                        .copied()
                        .flatten()
                        .map_or((0, 0), |(x, y)| (to_u32(x), to_u32(y)))
                })
                .collect(),
        }
    }

    fn page(&self, found: &Found, rects: &[usize]) -> Page {
        let all = self.finish(found, self.cells.len());
        Page {
            rects: rects.to_vec(),
            layout: RectLayout {
                positions: rects.iter().map(|&i| all.positions[i]).collect(),
                ..all
            },
        }
    }

    /// The smallest layout found, or `None` if even the largest bin fails.
    fn search(&self, threads: usize) -> Option<Found> {
        if self.area > self.bin_w.saturating_mul(self.bin_h) {
            return None; // more cells than the largest bin holds
        }
        if self.members.is_empty() {
            return Some(Found {
                width: 0,
                height: 0,
                corners: Vec::new(),
            });
        }
        let kinds = Kinds::new(&self.cells, self.members.iter().copied());
        let effort = Effort::for_rects(self.members.len(), kinds.len());
        let jobs: Vec<(Strategy, u64)> = effort
            .strategies
            .iter()
            .flat_map(|&h| self.widths(effort.widths).into_iter().map(move |w| (h, w)))
            .collect();
        // Two phases: every (strategy, width) finds its first height that
        // packs, then only the most promising bisect down to the tolerance.
        // The winner is chosen by (key, job index), so the thread count
        // cannot change the result.
        let scouts = parallel_map(&jobs, threads, |&(strategy, w)| {
            self.scout(&kinds, strategy, w)
        });
        let mut ranked: Vec<usize> = (0..jobs.len()).filter(|&j| scouts[j].is_some()).collect();
        ranked.sort_by_key(|&j| (scouts[j].as_ref().map(|s| s.best.0), j));
        ranked.truncate(effort.refine);
        let refined = parallel_map(&ranked, threads, |&j| {
            let scout = scouts[j].as_ref()?;
            self.refine(&kinds, jobs[j], scout, effort.tolerance)
        });
        let mut best: Option<(Key, Found)> = scouts
            .into_iter()
            .flatten()
            .map(|s| s.best)
            .chain(refined.into_iter().flatten())
            .reduce(|a, b| if b.0 < a.0 { b } else { a });
        if best.is_none() {
            best = self.attempt(&kinds, GLOBAL_SHORT_SIDE, self.bin_w, self.bin_h);
        }
        best.map(|(_, found)| found)
    }

    /// Candidate bin widths (including one padding).
    fn widths(&self, count: usize) -> Vec<u64> {
        let (widest, step) = self.extent(|c| c.0);
        if self.pow2 {
            let mut widths = Vec::new();
            let mut w = pow2_ceil(widest - self.pad).max(1);
            while w + self.pad <= self.bin_w {
                widths.push(w + self.pad);
                w *= 2;
            }
            return widths;
        }
        // Atlases stay within about 4:1: GPUs limit each side, and a strip
        // is awkward to inspect; every width in between is fair game.
        let root = self.area.isqrt() + 1;
        let narrowest = widest
            .max(self.area.div_ceil(self.bin_h.max(1)))
            .max(root / 2)
            .min(self.bin_w);
        let widest_useful = (2 * root).clamp(narrowest, self.bin_w);
        let mut widths = vec![root];
        if count == 2 {
            widths.push(root * 9 / 8);
        } else {
            // Geometric spread over [narrowest, widest_useful].
            let span = widest_useful as f64 / narrowest as f64;
            for k in 0..count.saturating_sub(1) {
                let t = k as f64 / (count - 2).max(1) as f64;
                widths.push((narrowest as f64 * span.powf(t)) as u64);
            }
        }
        for w in widths.iter_mut() {
            *w = (*w).clamp(narrowest, widest_useful);
        }
        // Multiples of the cells' common width pack equal cells exactly.
        if step > 1 {
            for w in widths.iter_mut() {
                let up = w.div_ceil(step) * step;
                *w = if up <= self.bin_w {
                    up
                } else {
                    (*w / step * step).max(narrowest)
                };
            }
        }
        widths.sort_unstable();
        widths.dedup();
        widths
    }

    /// Packs at bin width `w` from the area bound up until a height packs.
    fn scout(&self, kinds: &Kinds, strategy: Strategy, w: u64) -> Option<Scout> {
        let (tallest, _) = self.extent(|c| c.1);
        let lower = tallest.max(self.area.div_ceil(w.max(1)));
        if lower > self.bin_h {
            return None;
        }
        if self.pow2 {
            // Powers of two: bisect over exponents right away (a few tries).
            let mut best: Option<(Key, Found)> = None;
            let (mut lo, mut hi) = (
                pow2_ceil(lower - self.pad).max(1).trailing_zeros(),
                (self.bin_h - self.pad).max(1).ilog2(),
            );
            while lo <= hi {
                let mid = lo + (hi - lo) / 2;
                match self.attempt(kinds, strategy, w, (1u64 << mid) + self.pad) {
                    Some(found) => {
                        if best.as_ref().is_none_or(|(k, _)| found.0 < *k) {
                            best = Some(found);
                        }
                        if mid == 0 {
                            break;
                        }
                        hi = mid - 1;
                    }
                    None => lo = mid + 1,
                }
            }
            let best = best?;
            let ok = best.1.height + self.pad;
            return Some(Scout {
                best,
                failed: ok,
                ok,
            });
        }
        let step = self.height_step();
        let mut failed = lower - 1;
        let mut gallop = (lower / 128).max(step);
        // The area bound itself only packs when a few sizes tile the bin
        // exactly; otherwise the first try starts one gallop step above it.
        let mut h = if kinds.len() <= 4 {
            lower
        } else {
            lower.saturating_add(gallop).min(self.bin_h)
        };
        loop {
            if let Some(found) = self.attempt(kinds, strategy, w, h) {
                let ok = found.1.height + self.pad;
                return Some(Scout {
                    best: found,
                    failed,
                    ok,
                });
            }
            failed = h;
            if h >= self.bin_h {
                return None;
            }
            h = h.saturating_add(gallop).min(self.bin_h);
            gallop = gallop.saturating_mul(2);
        }
    }

    /// Bisects the bin height between a scout's failure and success down to
    /// `tolerance`; returns the best layout met.
    fn refine(
        &self,
        kinds: &Kinds,
        (strategy, w): (Strategy, u64),
        scout: &Scout,
        tolerance: u64,
    ) -> Option<(Key, Found)> {
        let step = self.height_step();
        let (mut failed, mut ok) = (scout.failed, scout.ok);
        let mut best: Option<(Key, Found)> = None;
        // (`ok` may drop below `failed`: packing is not monotone in height.)
        while ok.saturating_sub(failed) > tolerance.max(step) {
            let mid = failed + (ok - failed) / 2;
            match self.attempt(kinds, strategy, w, mid) {
                Some(found) => {
                    ok = (found.1.height + self.pad).min(mid);
                    if best.as_ref().is_none_or(|(k, _)| found.0 < *k) {
                        best = Some(found);
                    }
                }
                None => failed = mid,
            }
        }
        best
    }

    /// Heights that are sums of cell heights: their greatest common divisor.
    fn height_step(&self) -> u64 {
        self.extent(|c| c.1).1.max(1)
    }

    /// One pack into a `w x h` bin; `None` unless every cell is placed.
    fn attempt(&self, kinds: &Kinds, strategy: Strategy, w: u64, h: u64) -> Option<(Key, Found)> {
        let mut out = vec![None; self.cells.len()];
        let placed = MaxRects::default().run(kinds, strategy, w, h, &mut out);
        if placed < self.members.len() {
            return None;
        }
        // The used extent; the last row and column need no trailing padding.
        let (mut width, mut height) = (0, 0);
        for &i in &self.members {
            let (x, y) = out[i]?;
            width = width.max(x + self.cells[i].0);
            height = height.max(y + self.cells[i].1);
        }
        let (mut width, mut height) = (width - self.pad, height - self.pad);
        if self.pow2 {
            (width, height) = (pow2_ceil(width), pow2_ceil(height));
        }
        let key = Key::new(width, height, self.pad);
        Some((
            key,
            Found {
                width,
                height,
                corners: out,
            },
        ))
    }
}

/// A width's first packing height: the layout, the highest height known
/// to fail (or the area bound minus one), and the height used.
struct Scout {
    best: (Key, Found),
    failed: u64,
    ok: u64,
}

/// `f` over `items` on up to `threads` threads, results in `items`' order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len()).max(1);
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..items.len())
                        .step_by(threads)
                        .map(|j| (j, f(&items[j])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            // A panic in a worker is a bug; re-raise it here.
            for (j, r) in worker
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
            {
                results[j] = Some(r);
            }
        }
    });
    results.into_iter().flatten().collect()
}

/// Orders layouts: smaller area first, then squarer, then narrower. The area
/// counts one padding row and column, as if every cell carried its own:
/// otherwise a one-row strip always wins by saving the padding between rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    area: u64,
    skew: u64,
    width: u64,
}

impl Key {
    fn new(width: u64, height: u64, pad: u64) -> Key {
        Key {
            area: (width + pad).saturating_mul(height + pad),
            skew: width.abs_diff(height),
            width,
        }
    }
}

/// Global best fit, best short side: the page filler and fallback.
const GLOBAL_SHORT_SIDE: Strategy = Strategy {
    order: Order::Global,
    heuristic: Heuristic::ShortSide,
};

const fn strategy(order: Order, heuristic: Heuristic) -> Strategy {
    Strategy { order, heuristic }
}

/// Every strategy worth trying when time allows: global best fit wins most
/// often, sorted orders (bottom-left above all) on sets of a few sizes.
const ALL_STRATEGIES: [Strategy; 9] = [
    GLOBAL_SHORT_SIDE,
    strategy(Order::Global, Heuristic::LongSide),
    strategy(Order::Global, Heuristic::Area),
    strategy(Order::Tallest, Heuristic::ShortSide),
    strategy(Order::Tallest, Heuristic::LongSide),
    strategy(Order::Tallest, Heuristic::Area),
    strategy(Order::Tallest, Heuristic::BottomLeft),
    strategy(Order::Largest, Heuristic::ShortSide),
    strategy(Order::Largest, Heuristic::BottomLeft),
];

/// For thousands of rects: the two that cost least per try and pack best,
/// one per thread on two cores.
const LARGE_STRATEGIES: [Strategy; 2] = [
    GLOBAL_SHORT_SIDE,
    strategy(Order::Tallest, Heuristic::BottomLeft),
];

/// How hard [`Problem::search`] tries, by the number of rects.
struct Effort {
    strategies: &'static [Strategy],
    widths: usize,
    /// How many of the best (strategy, width) scouts bisect their height.
    refine: usize,
    /// Stop bisecting heights this close.
    tolerance: u64,
}

impl Effort {
    /// For `n` rects of `kinds` distinct sizes. Few sizes make tries cheap
    /// and the best width a matter of exact sums, so more widths are tried.
    fn for_rects(n: usize, kinds: usize) -> Effort {
        match n {
            0..=1000 => Effort {
                strategies: &ALL_STRATEGIES,
                widths: if kinds <= 64 { 64 } else { 24 },
                refine: 16,
                tolerance: 1,
            },
            1001..=4000 => Effort {
                strategies: &LARGE_STRATEGIES,
                widths: 6,
                refine: 6,
                tolerance: 2,
            },
            // One try per strategy and width: a try costs 10–25 ms at
            // 10,000 rects, and bisecting gains little.
            _ => Effort {
                strategies: &LARGE_STRATEGIES,
                widths: 3,
                refine: 0,
                tolerance: u64::MAX,
            },
        }
    }
}

fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn to_u32(v: u64) -> u32 {
    // Sizes are bounded by the u32 maximum size.
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Largest power of two not above `n` (0 stays 0: nothing fits).
pub(super) fn pow2_floor(n: u32) -> u32 {
    match n {
        0 => 0,
        _ => 1 << (31 - n.leading_zeros()),
    }
}

/// Smallest power of two not below `n`.
fn pow2_ceil(n: u64) -> u64 {
    n.checked_next_power_of_two().unwrap_or(u64::MAX)
}
