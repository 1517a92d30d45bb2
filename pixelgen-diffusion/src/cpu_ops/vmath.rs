//! Vectorisable f32 math for the CPU kernels: `exp`, `erf`, SiLU, exact-erf GELU, and
//! lane-split sums and maxima.
//!
//! Invariants:
//! - Every function is plain IEEE arithmetic (adds, multiplies, divides, min/max, integer
//!   bit tricks), with no `mul_add` and no library calls, so LLVM vectorises the loops that
//!   call them and Rust's no-contraction rule makes the AVX2 and the baseline builds of a
//!   loop ([`dispatch!`]) compute the same bits.
//! - Reductions split into [`LANES`] partial results in a fixed order, so a sum depends
//!   only on its input, never on the instruction set or on threads.

/// Partial sums per reduction; 16 f32 fill two AVX2 registers.
pub const LANES: usize = 16;

/// Runs `$body` compiled with AVX2 enabled when the CPU has it, else compiled for the
/// baseline target. Both builds do the same operations in the same order (see the module
/// invariants), so only their speed differs.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `e^x` with a relative error below 2.5e-7 (Cephes' `expf`: range reduction by ln 2 and a
/// degree-6 polynomial); 0 below -87.3 (where e^x is subnormal), +inf above 88.72.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 × 2^23 rounds to an integer n (no `round`, which the baseline target
    // cannot vectorise) and leaves n in the low bits, read out as an integer without a
    // float-to-int conversion (whose saturating form does not vectorise either).
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.3, 88.72);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let k = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // 2^k as two factors, each a normal f32 for k in [-126, 128]; multiplying by powers
    // of two is exact, so this is y · 2^k rounded once.
    let half = k >> 1;
    let low = f32::from_bits(((half + 127) as u32) << 23);
    let high = f32::from_bits(((k - half + 127) as u32) << 23);
    let value = y * low * high;
    if x < -87.3 {
        0.0
    } else if x > 88.72 {
        f32::INFINITY
    } else {
        value
    }
}

/// `erf(x)` for |x| < 0.8 from its Taylor series, relative error below 2e-7: near 0 a
/// formula in `1 - erfc` would cancel.
#[inline(always)]
fn erf_series(x: f32) -> f32 {
    // 2/√π · (-1)^n / (n! (2n + 1)), n = 0..=9: the next term is below 2e-10 at 0.8.
    const TAYLOR: [f32; 10] = [
        std::f32::consts::FRAC_2_SQRT_PI,
        -0.376_126_4,
        0.112_837_92,
        -0.026_866_17,
        0.005_223_978,
        -8.548_327e-4,
        1.205_533_3e-4,
        -1.492_565e-5,
        1.646_211_4e-6,
        -1.636_584_5e-7,
    ];
    let z = x * x;
    let mut series = TAYLOR[9];
    for &c in TAYLOR[..9].iter().rev() {
        series = series * z + c;
    }
    x * series
}

/// `erfc(a)` for `a >= 0`, relative error below 2e-7 up to a ≈ 4 (beyond, the f32 rounding
/// of a² adds up to 1e-5 relative on values below 1e-7): the Chebyshev fit of Numerical
/// Recipes' `erfcc`. Relative accuracy matters: GELU's negative tail is `x/2 · erfc`.
#[inline(always)]
fn erfc_nonnegative(a: f32) -> f32 {
    const C: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut p = C[9];
    for &c in C[..9].iter().rev() {
        p = p * t + c;
    }
    t * exp(p - a * a)
}

/// `erf(x)`: absolute error below 2e-7, relative below 5e-7. The kernels only need GELU;
/// this is how the tests check its two pieces over the whole line.
#[cfg(test)]
fn erf(x: f32) -> f32 {
    let large = 1.0 - erfc_nonnegative(x.abs());
    if x.abs() < 0.8 {
        erf_series(x)
    } else if x < 0.0 {
        -large
    } else {
        large
    }
}

/// SiLU, `x · sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU with the exact erf (not the tanh approximation), as diffusers' GEGLU: relative
/// error below 1e-6 down to x = -2, below 5e-6 down to -6 (|GELU| < 0.05 there), and
/// absolute error below 1e-12 beyond; the negative tail is taken as `x/2 · erfc(|x|/√2)`
/// so it does not cancel.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let erfc = erfc_nonnegative(u.abs());
    let one_plus_erf = if u.abs() < 0.8 {
        1.0 + erf_series(u)
    } else if u < 0.0 {
        erfc
    } else {
        2.0 - erfc
    };
    0.5 * x * one_plus_erf
}

/// The sum of `xs` in [`LANES`] fixed partial sums (f32).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(tail) {
        *lane += x;
    }
    lanes.iter().sum()
}

/// The sum of `(x - mean)^2` over `xs`, in [`LANES`] fixed partial sums.
#[inline(always)]
pub fn sum_squared_deviations(xs: &[f32], mean: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            let d = x - mean;
            *lane += d * d;
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(tail) {
        let d = x - mean;
        *lane += d * d;
    }
    lanes.iter().sum()
}

/// The largest of `xs` (-inf when empty; NaNs are skipped, as `f32::max` does).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(tail) {
        *lane = lane.max(x);
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> impl Iterator<Item = f32> {
        (-20_000..=20_000).map(|i| i as f32 * 0.005)
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        for x in samples().chain([
            -87.0, -86.5, -80.0, 80.0, 88.0, 88.5, 88.69, 0.0, -0.0, 1e-30,
        ]) {
            let (ours, std) = (exp(x), x.exp());
            if std.is_infinite() {
                assert_eq!(ours, std, "exp({x})");
                continue;
            }
            let rel = ((ours - std) / std).abs();
            assert!(
                rel < 2.5e-7 || (x < -87.0 && (ours - std).abs() < 1.3e-38),
                "exp({x}) = {ours}, std {std}, rel {rel}"
            );
        }
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NEG_INFINITY) == 0.0);
    }

    #[test]
    fn erf_and_gelu_match_f64_reference() {
        for x in samples() {
            let reference = libm_erf(x as f64);
            let error = (erf(x) as f64 - reference).abs();
            assert!(
                error < 2e-7 && error < 5e-7 * reference.abs().max(1e-30),
                "erf({x}) = {}, reference {reference}",
                erf(x)
            );
            let u = x as f64 / 2f64.sqrt();
            let one_plus_erf = if u <= -3.0 {
                libm_erfc(-u)
            } else {
                1.0 + libm_erf(u)
            };
            let gelu = 0.5 * x as f64 * one_plus_erf;
            let error = (gelu_erf(x) as f64 - gelu).abs();
            assert!(
                error <= 1e-6 * gelu.abs()
                    || (x < -2.0 && error <= 5e-6 * gelu.abs())
                    || (x < -6.0 && error < 1e-12),
                "gelu({x}) = {}, reference {gelu}",
                gelu_erf(x)
            );
        }
    }

    /// erf in f64, accurate to 1e-12, as an independent reference.
    fn libm_erf(x: f64) -> f64 {
        let y = if x.abs() < 3.0 {
            // Taylor series.
            let a = x.abs();
            let mut term = a;
            let mut total = a;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                total += term / (2.0 * n + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            1.0 - libm_erfc(x.abs())
        };
        if x < 0.0 { -y } else { y }
    }

    /// erfc(a) in f64 for a >= 3 by its continued fraction, without cancellation:
    /// exp(-a²)/(a√π) · 1/(1 + 1/(2a²) / (1 + 2/(2a²) / (1 + ...))).
    fn libm_erfc(a: f64) -> f64 {
        assert!(a >= 3.0);
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = k as f64 / 2.0 / (a * a) / (1.0 + f);
        }
        (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) / (1.0 + f)
    }

    #[test]
    fn silu_matches_definition() {
        for x in samples() {
            let reference = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!(
                (silu(x) as f64 - reference).abs() < 4e-7 * (1.0 + reference.abs()),
                "silu({x})"
            );
        }
    }

    #[test]
    fn reductions_match_f64() {
        let xs: Vec<f32> = (0..1037)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let total: f64 = xs.iter().map(|&x| x as f64).sum();
        assert!((sum(&xs) as f64 - total).abs() < 1e-3);
        let mean = (total / xs.len() as f64) as f32;
        let dev: f64 = xs.iter().map(|&x| ((x - mean) as f64).powi(2)).sum();
        assert!((sum_squared_deviations(&xs, mean) as f64 - dev).abs() / dev < 1e-6);
        assert_eq!(max(&xs), xs.iter().copied().fold(f32::MIN, f32::max));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(sum(&xs[..5]), xs[..5].iter().sum::<f32>());
    }
}
