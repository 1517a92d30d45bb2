//! The seeded corpora of sprite sizes the packers are measured on.

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

pub(super) struct Corpus {
    pub(super) name: &'static str,
    pub(super) sizes: Vec<(u32, u32)>,
    /// Timed runs (median reported).
    pub(super) runs: usize,
}

pub(super) fn corpora(seed: u64, quick: bool) -> Vec<Corpus> {
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
