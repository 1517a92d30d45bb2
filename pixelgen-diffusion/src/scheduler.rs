//! Samplers: DDIM, Euler and Euler-ancestral, as diffusers computes them
//! (`DDIMScheduler`, `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler` built
//! `from_config` of the model's scheduler config). The model's noise schedule and
//! prediction type come from its config; the sampler and step count from the sprite.
//! Noise for ancestral steps is passed in by the caller, so that it comes from
//! pixelgen's own seeded generator (or from a file, to compare with diffusers).

use candle_core::{Result as CandleResult, Tensor};

use super::config::SchedulerConfig;
use crate::Scheduler;

/// What the UNet was trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

/// A sampler set up for a number of steps.
#[derive(Debug, Clone)]
pub struct Sampler {
    kind: Scheduler,
    prediction: Prediction,
    /// The timestep the UNet sees at each step.
    timesteps: Vec<f64>,
    /// Euler family: the noise level at each step, with a final 0.
    sigmas: Vec<f64>,
    /// DDIM: cumulative alpha products of the training schedule.
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    /// DDIM: how far apart its steps are, in training timesteps.
    step_ratio: usize,
    clip_sample: Option<f64>,
    init_noise_sigma: f64,
}

impl Sampler {
    /// The sampler `kind` over `steps` steps of the schedule in `config`.
    /// Errors name the config field that asks for something not implemented.
    pub fn new(config: &SchedulerConfig, kind: Scheduler, steps: usize) -> Result<Self, String> {
        if steps == 0 {
            return Err("steps must be at least 1".to_string());
        }
        let train_steps = config.num_train_timesteps;
        if steps > train_steps {
            return Err(format!(
                "{steps} steps is more than the model's {train_steps} training timesteps"
            ));
        }
        if config.thresholding {
            return Err(
                "scheduler config sets `thresholding`, which pixelgen does not implement".into(),
            );
        }
        let prediction = match config.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            other => {
                return Err(format!(
                    "unknown prediction_type `{other}` in scheduler config"
                ));
            }
        };
        let mut betas = betas(config)?;
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut product = 1.0;
        for beta in &betas {
            product *= 1.0 - beta;
            alphas_cumprod.push(product);
        }
        if config.rescale_betas_zero_snr && kind != Scheduler::Ddim {
            // diffusers' Euler samplers avoid an infinite first sigma this way.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f64.powi(-24);
            }
        }
        let default_spacing = match kind {
            Scheduler::Ddim => "leading",
            Scheduler::Euler | Scheduler::EulerAncestral => "linspace",
        };
        let spacing = config
            .timestep_spacing
            .as_deref()
            .unwrap_or(default_spacing);
        let mut sampler = Sampler {
            kind,
            prediction,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            alphas_cumprod,
            final_alpha_cumprod: 1.0,
            step_ratio: train_steps / steps,
            clip_sample: None,
            init_noise_sigma: 1.0,
        };
        match kind {
            Scheduler::Ddim => {
                sampler.timesteps =
                    timesteps(kind, spacing, train_steps, steps, config.steps_offset)?;
                sampler.final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
                    1.0
                } else {
                    sampler.alphas_cumprod[0]
                };
                if config.clip_sample.unwrap_or(true) {
                    sampler.clip_sample = Some(config.clip_sample_range.unwrap_or(1.0));
                }
            }
            Scheduler::Euler | Scheduler::EulerAncestral => {
                if config
                    .interpolation_type
                    .as_deref()
                    .is_some_and(|t| t != "linear")
                {
                    return Err("scheduler config sets an `interpolation_type` other than linear, which pixelgen does not implement".into());
                }
                if config
                    .timestep_type
                    .as_deref()
                    .is_some_and(|t| t != "discrete")
                {
                    return Err("scheduler config sets a `timestep_type` other than discrete, which pixelgen does not implement".into());
                }
                let train_sigmas: Vec<f64> = sampler
                    .alphas_cumprod
                    .iter()
                    .map(|a| ((1.0 - a) / a).sqrt())
                    .collect();
                let mut timesteps =
                    timesteps(kind, spacing, train_steps, steps, config.steps_offset)?;
                let mut sigmas: Vec<f64> = timesteps
                    .iter()
                    .map(|&t| interpolate(&train_sigmas, t))
                    .collect();
                if config.use_karras_sigmas && kind == Scheduler::Euler {
                    let log_sigmas: Vec<f64> = train_sigmas.iter().map(|s| s.ln()).collect();
                    sigmas = karras_sigmas(&sigmas, steps);
                    timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
                }
                if config
                    .final_sigmas_type
                    .as_deref()
                    .is_some_and(|t| t != "zero")
                {
                    sigmas.push(*train_sigmas.first().unwrap_or(&0.0));
                } else {
                    sigmas.push(0.0);
                }
                let max_sigma = sigmas.iter().cloned().fold(0.0, f64::max);
                sampler.init_noise_sigma = if matches!(spacing, "linspace" | "trailing") {
                    max_sigma
                } else {
                    (max_sigma * max_sigma + 1.0).sqrt()
                };
                sampler.timesteps = timesteps;
                sampler.sigmas = sigmas;
            }
        }
        Ok(sampler)
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// What the initial unit-variance noise is multiplied by.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// The step an img2img drawing at `strength` (0 < strength ≤ 1) starts from: it runs
    /// the last `int(steps × strength)` steps, as diffusers' `get_timesteps` keeps them.
    /// `None` when that is no step at all (the strength is too small for the step count).
    pub fn first_step(&self, strength: f64) -> Option<usize> {
        let steps = self.timesteps.len();
        let kept = ((steps as f64 * strength) as usize).min(steps);
        (kept > 0).then_some(steps - kept)
    }

    /// `original` noised to the level of step `index` (diffusers' `add_noise` at
    /// `timesteps[index]`): DDIM mixes √ᾱ·x + √(1−ᾱ)·ε, the Euler samplers add σ·ε.
    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> CandleResult<Tensor> {
        match self.kind {
            Scheduler::Ddim => {
                let t = self.timesteps[index] as usize;
                let alpha = self.alphas_cumprod[t];
                original.affine(alpha.sqrt(), 0.0)? + noise.affine((1.0 - alpha).sqrt(), 0.0)?
            }
            Scheduler::Euler | Scheduler::EulerAncestral => {
                original + noise.affine(self.sigmas[index], 0.0)?
            }
        }
    }

    /// Whether `step` needs fresh noise (only the ancestral sampler does).
    pub fn needs_noise(&self) -> bool {
        self.kind == Scheduler::EulerAncestral
    }

    /// Scales the UNet input at step `index` (Euler samplers divide by √(σ²+1)).
    pub fn scale_model_input(&self, sample: &Tensor, index: usize) -> CandleResult<Tensor> {
        match self.kind {
            Scheduler::Ddim => Ok(sample.clone()),
            Scheduler::Euler | Scheduler::EulerAncestral => {
                let sigma = self.sigmas[index];
                sample.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)
            }
        }
    }

    /// One step from `sample` at step `index`, given the (guided) UNet output.
    /// `noise` is the unit-variance noise of an ancestral step, same shape as `sample`.
    pub fn step(
        &self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> CandleResult<Tensor> {
        match self.kind {
            Scheduler::Ddim => self.ddim_step(model_output, index, sample),
            Scheduler::Euler | Scheduler::EulerAncestral => {
                let sigma = self.sigmas[index];
                let sigma_next = self.sigmas[index + 1];
                let original = match self.prediction {
                    Prediction::Epsilon => (sample - model_output.affine(sigma, 0.0)?)?,
                    Prediction::VPrediction => {
                        let c = sigma * sigma + 1.0;
                        (model_output.affine(-sigma / c.sqrt(), 0.0)?
                            + sample.affine(1.0 / c, 0.0)?)?
                    }
                    Prediction::Sample => model_output.clone(),
                };
                let derivative = ((sample - &original)? / sigma)?;
                if self.kind == Scheduler::Euler {
                    return sample + derivative.affine(sigma_next - sigma, 0.0)?;
                }
                let sigma_up =
                    (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
                        / (sigma * sigma))
                        .sqrt();
                let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up)
                    .max(0.0)
                    .sqrt();
                let previous = (sample + derivative.affine(sigma_down - sigma, 0.0)?)?;
                match noise {
                    Some(noise) => previous + noise.affine(sigma_up, 0.0)?,
                    None => Ok(previous),
                }
            }
        }
    }

    fn ddim_step(
        &self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
    ) -> CandleResult<Tensor> {
        let t = self.timesteps[index] as i64;
        let previous_t = t - self.step_ratio as i64;
        let alpha = self.alphas_cumprod[t as usize];
        let alpha_previous = if previous_t >= 0 {
            self.alphas_cumprod[previous_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta = 1.0 - alpha;
        let (mut original, epsilon) = match self.prediction {
            Prediction::Epsilon => (
                (sample - model_output.affine(beta.sqrt(), 0.0)?)?
                    .affine(1.0 / alpha.sqrt(), 0.0)?,
                model_output.clone(),
            ),
            Prediction::VPrediction => (
                (sample.affine(alpha.sqrt(), 0.0)? - model_output.affine(beta.sqrt(), 0.0)?)?,
                (model_output.affine(alpha.sqrt(), 0.0)? + sample.affine(beta.sqrt(), 0.0)?)?,
            ),
            Prediction::Sample => (
                model_output.clone(),
                (sample - model_output.affine(alpha.sqrt(), 0.0)?)?
                    .affine(1.0 / beta.sqrt(), 0.0)?,
            ),
        };
        if let Some(range) = self.clip_sample {
            original = original.clamp(-range, range)?;
        }
        original.affine(alpha_previous.sqrt(), 0.0)?
            + epsilon.affine((1.0 - alpha_previous).sqrt(), 0.0)?
    }
}

/// ᾱ_t for every training timestep: the DDPM schedule a model was trained with (its
/// `beta_schedule`, rescaled to zero terminal SNR when the config says so), which training
/// noises latents with.
pub fn training_alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f64>, String> {
    let mut betas = betas(config)?;
    if config.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let mut product = 1.0;
    Ok(betas
        .iter()
        .map(|beta| {
            product *= 1.0 - beta;
            product
        })
        .collect())
}

fn betas(config: &SchedulerConfig) -> Result<Vec<f64>, String> {
    let n = config.num_train_timesteps;
    match config.beta_schedule.as_str() {
        "linear" => Ok(linspace(config.beta_start, config.beta_end, n)),
        "scaled_linear" => Ok(
            linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
        ),
        "squaredcos_cap_v2" => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            Ok((0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                })
                .collect())
        }
        other => Err(format!(
            "unknown beta_schedule `{other}` in scheduler config"
        )),
    }
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023).
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut product = 1.0;
    let mut sqrt_alpha_bar: Vec<f64> = betas
        .iter()
        .map(|b| {
            product *= 1.0 - b;
            product.sqrt()
        })
        .collect();
    let first = sqrt_alpha_bar[0];
    let last = *sqrt_alpha_bar.last().unwrap_or(&0.0);
    for value in &mut sqrt_alpha_bar {
        *value = (*value - last) * first / (first - last);
    }
    let alpha_bar: Vec<f64> = sqrt_alpha_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(alpha_bar.len());
    for (i, a) in alpha_bar.iter().enumerate() {
        let alpha = if i == 0 { *a } else { a / alpha_bar[i - 1] };
        out.push(1.0 - alpha);
    }
    out
}

fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                start + step * i as f64
            }
        })
        .collect()
}

/// The timesteps of `spacing`. Only `linspace` differs between samplers: DDIM rounds it to
/// whole timesteps, diffusers' Euler samplers keep it fractional (in f32).
fn timesteps(
    kind: Scheduler,
    spacing: &str,
    train: usize,
    steps: usize,
    offset: usize,
) -> Result<Vec<f64>, String> {
    Ok(match spacing {
        "leading" => {
            let ratio = (train / steps) as f64;
            (0..steps)
                .rev()
                .map(|i| (i as f64 * ratio).round_ties_even() + offset as f64)
                .collect()
        }
        "trailing" => trailing(train, steps),
        "linspace" => linspace(0.0, (train - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| match kind {
                Scheduler::Ddim => t.round_ties_even(),
                Scheduler::Euler | Scheduler::EulerAncestral => t as f32 as f64,
            })
            .collect(),
        other => {
            return Err(format!(
                "unknown timestep_spacing `{other}` in scheduler config"
            ));
        }
    })
}

/// `np.round(np.arange(train, 0, -train / steps)) - 1`, which has `steps` entries.
fn trailing(train: usize, steps: usize) -> Vec<f64> {
    let ratio = train as f64 / steps as f64;
    (0..steps)
        .map(|i| (train as f64 - ratio * i as f64).round_ties_even() - 1.0)
        .collect()
}

/// `np.interp(t, arange(len(values)), values)`.
fn interpolate(values: &[f64], t: f64) -> f64 {
    let last = values.len() - 1;
    if t <= 0.0 {
        return values[0];
    }
    if t >= last as f64 {
        return values[last];
    }
    let low = t.floor() as usize;
    let frac = t - low as f64;
    values[low] + (values[low + 1] - values[low]) * frac
}

/// Karras et al. (2022) noise levels between the schedule's extremes (ρ = 7).
fn karras_sigmas(sigmas: &[f64], steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (sigma_max, sigma_min) = (sigmas[0], sigmas[sigmas.len() - 1]);
    let (max_inv, min_inv) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The fractional timestep of a noise level, interpolating in log-sigma.
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"_class_name":"PNDMScheduler","beta_start":0.00085,"beta_end":0.012,"beta_schedule":"scaled_linear",
                "num_train_timesteps":1000,"steps_offset":1,"set_alpha_to_one":false,"clip_sample":false,"skip_prk_steps":true}"#,
        )
        .unwrap()
    }

    #[test]
    fn ddim_leading_timesteps_match_diffusers() {
        // DDIMScheduler.from_config(sd15).set_timesteps(4).timesteps
        let sampler = Sampler::new(&sd15(), Scheduler::Ddim, 4).unwrap();
        assert_eq!(sampler.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
        assert_eq!(sampler.init_noise_sigma(), 1.0);
    }

    #[test]
    fn euler_linspace_timesteps_and_sigmas_match_diffusers() {
        // EulerDiscreteScheduler.from_config(sd15).set_timesteps(4):
        // timesteps [999, 666, 333, 0], sigmas[0] = 14.6146, init_noise_sigma = sigmas[0].
        let sampler = Sampler::new(&sd15(), Scheduler::Euler, 4).unwrap();
        assert_eq!(sampler.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
        assert!(
            (sampler.sigmas[0] - 14.6146).abs() < 1e-3,
            "{}",
            sampler.sigmas[0]
        );
        assert_eq!(sampler.sigmas.len(), 5);
        assert_eq!(sampler.sigmas[4], 0.0);
        assert!((sampler.init_noise_sigma() - sampler.sigmas[0]).abs() < 1e-12);
    }

    #[test]
    fn trailing_spacing_starts_at_the_last_training_step() {
        let mut config = sd15();
        config.timestep_spacing = Some("trailing".into());
        let sampler = Sampler::new(&config, Scheduler::Euler, 1).unwrap();
        assert_eq!(sampler.timesteps(), &[999.0]);
        let sampler = Sampler::new(&config, Scheduler::Euler, 3).unwrap();
        assert_eq!(sampler.timesteps(), &[999.0, 666.0, 332.0]);
    }

    #[test]
    fn img2img_keeps_the_last_int_steps_times_strength_steps() {
        let sampler = Sampler::new(&sd15(), Scheduler::Ddim, 10).unwrap();
        assert_eq!(sampler.first_step(1.0), Some(0));
        assert_eq!(sampler.first_step(0.5), Some(5));
        // Python's int(10 × 0.7) is 7 (0.7 × 10 is 7.000000000000001 in binary).
        assert_eq!(sampler.first_step(0.7), Some(3));
        assert_eq!(sampler.first_step(0.3), Some(7));
        assert_eq!(sampler.first_step(0.05), None);
    }

    #[test]
    fn thresholding_is_refused_by_name() {
        let mut config = sd15();
        config.thresholding = true;
        let err = Sampler::new(&config, Scheduler::Ddim, 4).unwrap_err();
        assert!(err.contains("thresholding"), "{err}");
    }
}
