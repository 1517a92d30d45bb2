//! Deterministic maths: the hand-written RNG, hashing, turn-based sine and cosine, and
//! the animation phase. Integer and basic f64 arithmetic only, so output is the same on
//! every machine.

/// SplitMix64. Hand-written on purpose: a crate RNG may change its output
/// stream in an upgrade, which would silently invalidate the content-addressed
/// sprite cache.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    pub(super) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// SplitMix64 finaliser: a good 64-bit mixing function.
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn hash3(seed: u64, a: u64, b: u64) -> u64 {
    mix(seed ^ mix(a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)))
}

pub(super) fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// cos(2π·t) from a Taylor series, so animation poses do not depend on the
/// platform's libm. Exact (0, ±1) at quarter turns, which keeps passing frames
/// of walk cycles clean.
pub(super) fn cos_turns(t: f64) -> f64 {
    let mut r = t - t.floor();
    if r > 0.5 {
        r = 1.0 - r;
    }
    let mut sign = 1.0;
    if r > 0.25 {
        r = 0.5 - r;
        sign = -1.0;
    }
    let tau = std::f64::consts::TAU;
    if r <= 0.125 {
        let x2 = (r * tau) * (r * tau);
        let c = 1.0 - x2 / 90.0 * (1.0 - x2 / 132.0);
        sign * (1.0 - x2 / 2.0 * (1.0 - x2 / 12.0 * (1.0 - x2 / 30.0 * (1.0 - x2 / 56.0 * c))))
    } else {
        let x = (0.25 - r) * tau;
        let x2 = x * x;
        let c = 1.0 - x2 / 110.0 * (1.0 - x2 / 156.0);
        sign * x * (1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0 * c))))
    }
}

pub(super) fn sin_turns(t: f64) -> f64 {
    cos_turns(t - 0.25)
}

pub(super) fn lerp(a: f64, b: f64, t: f64) -> f64 {
    a + (b - a) * t
}

pub(super) fn round_i(x: f64) -> i32 {
    x.round() as i32
}

#[derive(Clone, Copy)]
pub(super) struct Anim {
    /// Position in the cycle, in [0, 1).
    pub(super) phase: f64,
    pub(super) animated: bool,
}

impl Anim {
    /// cos of the cycle, or 0 (the neutral pose) for a still sprite.
    pub(super) fn wave(&self) -> f64 {
        if self.animated {
            cos_turns(self.phase)
        } else {
            0.0
        }
    }

    pub(super) fn swave(&self) -> f64 {
        if self.animated {
            sin_turns(self.phase)
        } else {
            0.0
        }
    }
}
