//! pixelgen's own seeded Gaussian noise, drawn on the host so that one seed gives one
//! image on every machine and device (candle's `randn` cannot be seeded on the CPU, and
//! GPU generators differ from CPU ones).
//!
//! SplitMix64 feeds Box–Muller. Each use has its own stream (initial latents, then one per
//! ancestral step), so changing the step count does not change the initial noise.

/// What the noise is for; each gets an independent stream from the same seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    InitialLatents,
    AncestralStep(usize),
    /// A trained LoRA's initial down factor, per module (in the adapters' order).
    LoraFactor(usize),
    /// Training step `n`'s noise, and its timesteps.
    TrainingNoise(usize),
    TrainingTimesteps(usize),
    /// Which examples training step `n` takes (the order of an epoch).
    TrainingOrder(usize),
}

impl Stream {
    fn id(self) -> u64 {
        match self {
            Stream::InitialLatents => 0,
            Stream::AncestralStep(step) => 1 + step as u64,
            // Far above any step count.
            Stream::LoraFactor(module) => (1 << 40) + module as u64,
            Stream::TrainingNoise(step) => (2 << 40) + step as u64,
            Stream::TrainingTimesteps(step) => (3 << 40) + step as u64,
            Stream::TrainingOrder(epoch) => (4 << 40) + epoch as u64,
        }
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// `count` standard-normal values for `seed` and `stream`.
pub fn gaussian(seed: u64, stream: Stream, count: usize) -> Vec<f32> {
    let mut rng = SplitMix64(seed ^ stream.id().wrapping_mul(0xD1B5_4A32_D192_ED03));
    // Discard one output so that nearby seeds do not start from related states.
    rng.next();
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let radius = (-2.0 * rng.unit().ln()).sqrt();
        let angle = std::f64::consts::TAU * rng.unit();
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(count);
    out
}

/// `count` values uniform in (0, 1] for `seed` and `stream`.
pub fn uniform(seed: u64, stream: Stream, count: usize) -> Vec<f64> {
    let mut rng = SplitMix64(seed ^ stream.id().wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next();
    (0..count).map(|_| rng.unit()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_other_seed_other_noise() {
        let a = gaussian(42, Stream::InitialLatents, 1000);
        assert_eq!(a, gaussian(42, Stream::InitialLatents, 1000));
        assert_ne!(a, gaussian(43, Stream::InitialLatents, 1000));
        assert_ne!(a[..100], gaussian(42, Stream::AncestralStep(0), 100)[..]);
        // A longer draw extends a shorter one.
        assert_eq!(a[..10], gaussian(42, Stream::InitialLatents, 10)[..]);
    }

    #[test]
    fn noise_is_standard_normal() {
        let values = gaussian(7, Stream::InitialLatents, 200_000);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let variance = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((variance - 1.0).abs() < 0.01, "variance {variance}");
        let beyond_two = values.iter().filter(|v| v.abs() > 2.0).count() as f64 / n;
        assert!((beyond_two - 0.0455).abs() < 0.003, "tail {beyond_two}");
    }
}
