//! MaxRects with global best fit: at every step the (cell, free rect) pair with
//! the best score over *all* unplaced cells is placed, rather than the next cell
//! of a fixed order (Jylänki, "A Thousand Ways to Pack the Bin", MAXRECTS-*-GLOBAL).
//!
//! Cells of equal size are interchangeable, so they are grouped into *kinds*, and
//! each free rect caches its best kind: a placement only rescans the kinds for
//! the few free rects it creates, and for the free rects whose cached kind ran
//! out. A free rect that no remaining kind fits is dropped at once (kinds only
//! ever run out, so it could never be used), which keeps the free list short.
//!
//! The same machinery also runs the classic sorted orders (tallest or largest
//! first, each cell to its best free rect), which win on some inputs; the
//! layout search tries both.
//!
//! Every tie is broken on geometry and kind order, never on the free list's
//! order, so a layout depends only on the multiset of sizes.

/// How a (cell, free rect) pair is scored; lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heuristic {
    /// Best short side fit: the smaller leftover side, then the larger.
    ShortSide,
    /// Best long side fit: the larger leftover side, then the smaller.
    LongSide,
    /// Best area fit: the leftover area, then the smaller leftover side.
    Area,
    /// Bottom-left (here top-left, y down): the lowest bottom edge, then the
    /// leftmost. Sorted orders only: globally it would place small cells first.
    BottomLeft,
}

/// Which cell is placed next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// The best-scoring (cell, free rect) pair over all cells.
    Global,
    /// Tallest first (then widest), each to its best free rect.
    Tallest,
    /// Largest area first (then tallest, widest), each to its best free rect.
    Largest,
}

/// One way of packing: an order and a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Strategy {
    pub(super) order: Order,
    pub(super) heuristic: Heuristic,
}

impl Heuristic {
    /// A lower bound of the score of any cell with leftover width `dw` in a
    /// free rect of height `fh`. Equal scores lose to the cells already seen
    /// (wider ones, at equal height).
    fn bound(self, dw: u64, fh: u64) -> (u64, u64) {
        match self {
            Heuristic::ShortSide => (0, dw),
            Heuristic::LongSide => (dw, 0),
            Heuristic::Area => (dw * fh, 0),
            Heuristic::BottomLeft => (0, 0),
        }
    }

    /// The score of a `w x h` cell at the corner of free rect `f`.
    fn score(self, f: &Rect, w: u64, h: u64) -> (u64, u64) {
        let (fw, fh) = (f.x1 - f.x0, f.y1 - f.y0);
        let (dw, dh) = (fw - w, fh - h);
        match self {
            Heuristic::ShortSide => (dw.min(dh), dw.max(dh)),
            Heuristic::LongSide => (dw.max(dh), dw.min(dh)),
            Heuristic::Area => (fw * fh - w * h, dw.min(dh)),
            Heuristic::BottomLeft => (f.y0 + h, f.x0),
        }
    }
}

/// Cells grouped by size. Kinds are ordered big first (height, then width,
/// descending), which is also the tie-break between equally scored kinds.
#[derive(Debug)]
pub(super) struct Kinds {
    /// `(width, height)` of each kind.
    sizes: Vec<(u64, u64)>,
    /// The cells of each kind, ascending: they take that kind's places in order.
    members: Vec<Vec<usize>>,
    /// Distinct widths and heights, ascending.
    widths: Vec<u64>,
    heights: Vec<u64>,
    /// Per width index, its kinds as `(height index, kind)`, heights ascending.
    columns: Vec<Vec<(usize, usize)>>,
    /// Per kind, `(width index, height index)`.
    ranks: Vec<(usize, usize)>,
    /// Kinds by area, largest first (then kind order).
    largest: Vec<usize>,
}

impl Kinds {
    /// The number of distinct sizes.
    pub(super) fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Groups `cells[i]` for every `i` in `which` (cells must be non-empty).
    pub(super) fn new(cells: &[(u64, u64)], which: impl IntoIterator<Item = usize>) -> Kinds {
        let mut ids: Vec<usize> = which.into_iter().collect();
        ids.sort_by_key(|&i| {
            (
                std::cmp::Reverse(cells[i].1),
                std::cmp::Reverse(cells[i].0),
                i,
            )
        });
        let mut sizes: Vec<(u64, u64)> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for i in ids {
            match members.last_mut() {
                Some(last) if sizes.last() == Some(&cells[i]) => last.push(i),
                _ => {
                    sizes.push(cells[i]);
                    members.push(vec![i]);
                }
            }
        }
        let distinct = |pick: fn(&(u64, u64)) -> u64| {
            let mut v: Vec<u64> = sizes.iter().map(pick).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let widths = distinct(|s| s.0);
        let heights = distinct(|s| s.1);
        let mut columns = vec![Vec::new(); widths.len()];
        let mut ranks = Vec::with_capacity(sizes.len());
        for (kind, &(w, h)) in sizes.iter().enumerate() {
            // Both searches succeed: the lists were made from these sizes.
            let wi = widths.binary_search(&w).unwrap_or(0);
            let hi = heights.binary_search(&h).unwrap_or(0);
            columns[wi].push((hi, kind));
            ranks.push((wi, hi));
        }
        for column in &mut columns {
            column.sort_unstable();
        }
        let mut largest: Vec<usize> = (0..sizes.len()).collect();
        largest.sort_by_key(|&k| (std::cmp::Reverse(sizes[k].0 * sizes[k].1), k));
        Kinds {
            largest,
            sizes,
            members,
            widths,
            heights,
            columns,
            ranks,
        }
    }
}

/// Axis-aligned rect `[x0, x1) x [y0, y1)` in bin coordinates.
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

/// The best kind for one free rect, placed at its top-left corner. Ordered by
/// score, then big kinds first (wider, then taller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Choice {
    score: (u64, u64),
    width: std::cmp::Reverse<u64>,
    height: std::cmp::Reverse<u64>,
    /// Width and height index of the kind.
    at: (usize, usize),
}

#[derive(Debug, Clone, Copy)]
struct Free {
    rect: Rect,
    best: Choice,
}

impl Free {
    /// The global order: the choice, then topmost, then leftmost.
    fn key(&self) -> (Choice, u64, u64) {
        (self.best, self.rect.y0, self.rect.x0)
    }
}

/// A set of kinds as rows of bitsets: row `r` holds the columns `c` with a
/// kind left at `(r, c)`, and `rows` lists the non-empty rows, ascending.
#[derive(Debug, Default)]
struct Alive {
    rows: Vec<usize>,
    bits: Vec<u64>,
    /// Words per row.
    words: usize,
}

impl Alive {
    fn reset(&mut self, rows: usize, columns: usize) {
        self.words = columns.div_ceil(64);
        self.bits.clear();
        self.bits.resize(rows * self.words, 0);
        self.rows.clear();
    }

    fn row(&self, r: usize) -> &[u64] {
        &self.bits[r * self.words..(r + 1) * self.words]
    }

    fn set(&mut self, r: usize, c: usize) {
        if self.row(r).iter().all(|&w| w == 0) {
            let at = self.rows.partition_point(|&x| x < r);
            self.rows.insert(at, r);
        }
        self.bits[r * self.words + c / 64] |= 1 << (c % 64);
    }

    fn clear(&mut self, r: usize, c: usize) {
        self.bits[r * self.words + c / 64] &= !(1 << (c % 64));
        if self.row(r).iter().all(|&w| w == 0) {
            self.rows.retain(|&x| x != r);
        }
    }

    /// The non-empty rows `r` with `fits(r)`, which must hold for a prefix.
    fn rows_up_to(&self, fits: impl Fn(usize) -> bool) -> &[usize] {
        &self.rows[..self.rows.partition_point(|&r| fits(r))]
    }

    /// The highest column `<= top` set in row `r`.
    fn highest(&self, r: usize, top: usize) -> Option<usize> {
        let row = self.row(r);
        let mut word = top / 64;
        let mut mask = if top % 64 == 63 {
            u64::MAX
        } else {
            (1u64 << (top % 64 + 1)) - 1
        };
        loop {
            let bits = row[word] & mask;
            if bits != 0 {
                return Some(word * 64 + 63 - bits.leading_zeros() as usize);
            }
            word = word.checked_sub(1)?;
            mask = u64::MAX;
        }
    }
}

/// Which side of the placed rect a split piece lies on.
const LEFT: usize = 0;
const RIGHT: usize = 1;
const ABOVE: usize = 2;
const BELOW: usize = 3;

/// The packer; its buffers are reused across attempts.
#[derive(Debug, Default)]
pub(super) struct MaxRects {
    /// Maximal free rects that some remaining kind fits; none contains another.
    free: Vec<Free>,
    /// Pieces of free rects cut by the last placement, with their side.
    split: Vec<(Rect, usize)>,
    /// Surviving free rects flush against each side of the last placement.
    touch: [Vec<Rect>; 4],
    /// Kinds left, by width index (columns: height indices).
    by_width: Alive,
    /// Kinds left, by height index (columns: width indices).
    by_height: Alive,
    /// Cells left per kind.
    left: Vec<usize>,
}

impl MaxRects {
    /// Places `kinds`' cells into a `w x h` bin by `strategy`, writing each
    /// placed cell's top-left corner into `out[cell]` (which must be long
    /// enough; unplaced cells are untouched), and returns how many it placed.
    /// Global best fit places as many as fit; a sorted order stops at the
    /// first cell that does not fit.
    pub(super) fn run(
        &mut self,
        kinds: &Kinds,
        strategy: Strategy,
        w: u64,
        h: u64,
        out: &mut [Option<(u64, u64)>],
    ) -> usize {
        self.by_width.reset(kinds.widths.len(), kinds.heights.len());
        self.by_height
            .reset(kinds.heights.len(), kinds.widths.len());
        for &(wi, hi) in &kinds.ranks {
            self.by_width.set(wi, hi);
            self.by_height.set(hi, wi);
        }
        self.left.clear();
        self.left.extend(kinds.members.iter().map(Vec::len));
        // Free rects cache their best kind under this score: the global order
        // picks by it; sorted orders use it only to drop rects nothing fits.
        let heuristic = match strategy.order {
            Order::Global => strategy.heuristic,
            Order::Tallest | Order::Largest => Heuristic::ShortSide,
        };
        let tallest: Vec<usize>;
        let sequence: Option<&[usize]> = match strategy.order {
            Order::Global => None,
            Order::Tallest => {
                tallest = (0..kinds.sizes.len()).collect();
                Some(&tallest)
            }
            Order::Largest => Some(&kinds.largest),
        };
        let mut cursor = 0;
        self.free.clear();
        let bin = Rect {
            x0: 0,
            y0: 0,
            x1: w,
            y1: h,
        };
        if let Some(best) = self.best_for(kinds, heuristic, &bin) {
            self.free.push(Free { rect: bin, best });
        }
        let mut placed = 0;
        loop {
            let (at, kind) = match sequence {
                None => {
                    let Some(at) = self.next() else { break };
                    let best = self.free[at].best;
                    let column = &kinds.columns[best.at.0];
                    (
                        at,
                        column[column.partition_point(|&(hi, _)| hi < best.at.1)].1,
                    )
                }
                Some(sequence) => {
                    while sequence.get(cursor).is_some_and(|&k| self.left[k] == 0) {
                        cursor += 1;
                    }
                    let Some(&kind) = sequence.get(cursor) else {
                        break;
                    };
                    let Some(at) = self.next_for(kinds.sizes[kind], strategy.heuristic) else {
                        break;
                    };
                    (at, kind)
                }
            };
            let rect = self.free[at].rect;
            let (cw, ch) = kinds.sizes[kind];
            let taken = kinds.members[kind].len() - self.left[kind];
            out[kinds.members[kind][taken]] = Some((rect.x0, rect.y0));
            placed += 1;
            self.left[kind] -= 1;
            let used = Rect {
                x0: rect.x0,
                y0: rect.y0,
                x1: rect.x0 + cw,
                y1: rect.y0 + ch,
            };
            if self.left[kind] == 0 {
                self.kill(kinds.ranks[kind]);
                self.rescore(kinds, heuristic, kinds.ranks[kind]);
            }
            self.place(kinds, heuristic, used);
        }
        placed
    }

    /// Index of the free rect where a `w x h` cell scores best (then topmost,
    /// leftmost).
    fn next_for(&self, (w, h): (u64, u64), heuristic: Heuristic) -> Option<usize> {
        (0..self.free.len())
            .filter(|&i| {
                let f = &self.free[i].rect;
                f.x1 - f.x0 >= w && f.y1 - f.y0 >= h
            })
            .min_by_key(|&i| {
                let f = &self.free[i].rect;
                (heuristic.score(f, w, h), f.y0, f.x0)
            })
    }

    /// Index of the free rect holding the globally best choice.
    fn next(&self) -> Option<usize> {
        (0..self.free.len()).min_by_key(|&i| self.free[i].key())
    }

    /// Removes a kind that ran out from the alive sets.
    fn kill(&mut self, (wi, hi): (usize, usize)) {
        self.by_width.clear(wi, hi);
        self.by_height.clear(hi, wi);
    }

    /// The best remaining kind for `rect`, if any fits.
    ///
    /// For a fixed width, every heuristic improves as the height grows (the
    /// leftover height shrinks, the rest is unchanged), so each width's best
    /// candidate is its tallest kind that fits.
    fn best_for(&self, kinds: &Kinds, heuristic: Heuristic, rect: &Rect) -> Option<Choice> {
        let (fw, fh) = (rect.x1 - rect.x0, rect.y1 - rect.y0);
        let top_h = kinds.heights.partition_point(|&h| h <= fh).checked_sub(1)?;
        let choice = |wi: usize, hi: usize| {
            let (w, h) = (kinds.widths[wi], kinds.heights[hi]);
            Choice {
                score: heuristic.score(rect, w, h),
                width: std::cmp::Reverse(w),
                height: std::cmp::Reverse(h),
                at: (wi, hi),
            }
        };
        let fitting_w = self.by_width.rows_up_to(|wi| kinds.widths[wi] <= fw);
        if heuristic == Heuristic::ShortSide {
            // The least leftover side is either the least leftover width (the
            // widest kind that fits, at its tallest) or the least leftover
            // height (the tallest kind that fits, at its widest); any other
            // kind with that leftover has the same width (or height) and is
            // no taller (or wider), so one of the two wins.
            let top_w = kinds.widths.partition_point(|&w| w <= fw).checked_sub(1)?;
            let widest = fitting_w
                .iter()
                .rev()
                .find_map(|&wi| Some(choice(wi, self.by_width.highest(wi, top_h)?)))?;
            let fitting_h = self.by_height.rows_up_to(|hi| hi <= top_h);
            let tallest = fitting_h
                .iter()
                .rev()
                .find_map(|&hi| Some(choice(self.by_height.highest(hi, top_w)?, hi)))?;
            return Some(widest.min(tallest));
        }
        let mut best: Option<Choice> = None;
        // Widest first: the leftover width only grows, and it bounds the
        // score from below, so the scan stops once nothing left can win.
        for &wi in fitting_w.iter().rev() {
            let dw = fw - kinds.widths[wi];
            if best.is_some_and(|b| b.score <= heuristic.bound(dw, fh)) {
                break;
            }
            let Some(hi) = self.by_width.highest(wi, top_h) else {
                continue;
            };
            let candidate = choice(wi, hi);
            if best.is_none_or(|b| candidate < b) {
                best = Some(candidate);
            }
        }
        best
    }

    /// After `gone` ran out: rescores the free rects that had chosen it and
    /// drops those that no kind fits any more.
    fn rescore(&mut self, kinds: &Kinds, heuristic: Heuristic, gone: (usize, usize)) {
        let mut i = 0;
        while i < self.free.len() {
            if self.free[i].best.at == gone {
                match self.best_for(kinds, heuristic, &self.free[i].rect) {
                    Some(best) => self.free[i].best = best,
                    None => {
                        self.free.swap_remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
    }

    /// Marks `used` as taken: splits every free rect it overlaps into up to four
    /// maximal pieces, drops pieces contained in another free rect, and scores
    /// the new pieces (dropping those that nothing fits).
    fn place(&mut self, kinds: &Kinds, heuristic: Heuristic, used: Rect) {
        self.split.clear();
        for t in &mut self.touch {
            t.clear();
        }
        let u = used;
        let mut i = 0;
        while i < self.free.len() {
            let f = self.free[i].rect;
            // Bitwise `&`/`|`: one well-predicted branch for the common case of
            // a free rect far from `used`.
            let overlaps = (f.x0 < u.x1) & (u.x0 < f.x1) & (f.y0 < u.y1) & (u.y0 < f.y1);
            if !overlaps {
                let touching = [f.x1 == u.x0, f.x0 == u.x1, f.y1 == u.y0, f.y0 == u.y1];
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
            if u.x0 > f.x0 {
                self.split.push((Rect { x1: u.x0, ..f }, LEFT));
            }
            if u.x1 < f.x1 {
                self.split.push((Rect { x0: u.x1, ..f }, RIGHT));
            }
            if u.y0 > f.y0 {
                self.split.push((Rect { y1: u.y0, ..f }, ABOVE));
            }
            if u.y1 < f.y1 {
                self.split.push((Rect { y0: u.y1, ..f }, BELOW));
            }
        }
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
        // lies inside a removed free rect, and free rects never nest. A rect
        // dropped because nothing fits it can contain only pieces that nothing
        // fits either, so dropping it early changes nothing.)
        for k in 0..self.split.len() {
            let (r, side) = self.split[k];
            if self.touch[side].iter().any(|f| f.contains(&r)) {
                continue;
            }
            if let Some(best) = self.best_for(kinds, heuristic, &r) {
                self.free.push(Free { rect: r, best });
            }
        }
    }
}
