//! The noise schedule a model was trained with, and the noise-prediction loss under it.

use candle_core::{DType, Result, Tensor, bail};

use crate::config::SchedulerConfig;
use crate::unet::{AddedConditioning, Unet};

/// What the model learned to predict, and the noise schedule it was trained with: the DDPM
/// schedule of its `scheduler_config.json`.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f64>,
    v_prediction: bool,
}

impl NoiseSchedule {
    pub fn new(config: &SchedulerConfig) -> std::result::Result<Self, String> {
        let v_prediction = match config.prediction_type.as_str() {
            "epsilon" => false,
            "v_prediction" => true,
            other => {
                return Err(format!(
                    "a LoRA can be trained for epsilon or v prediction, not `{other}`"
                ));
            }
        };
        Ok(NoiseSchedule {
            alphas_cumprod: crate::scheduler::training_alphas_cumprod(config)?,
            v_prediction,
        })
    }

    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The noise-prediction loss of `unet` for clean `latents` noised with `noise` at
    /// `timesteps` (one per latent), conditioned on `context` (and, for SDXL, `added`): the
    /// mean squared error between the prediction and epsilon (or v), as diffusers'
    /// training scripts take it.
    pub fn loss(
        &self,
        unet: &Unet,
        latents: &Tensor,
        noise: &Tensor,
        timesteps: &[usize],
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let batch = latents.dim(0)?;
        if timesteps.len() != batch {
            bail!("{} timesteps for {batch} latents", timesteps.len());
        }
        let mut signal = Vec::with_capacity(batch);
        let mut noise_level = Vec::with_capacity(batch);
        for &t in timesteps {
            let Some(&alpha) = self.alphas_cumprod.get(t) else {
                bail!(
                    "timestep {t} is beyond the schedule's {}",
                    self.train_steps()
                );
            };
            signal.push(alpha.sqrt() as f32);
            noise_level.push((1.0 - alpha).sqrt() as f32);
        }
        let device = latents.device();
        let per_sample = |values: Vec<f32>| Tensor::from_vec(values, (batch, 1, 1, 1), device);
        let (signal, noise_level) = (per_sample(signal)?, per_sample(noise_level)?);
        let noisy = (latents.broadcast_mul(&signal)? + noise.broadcast_mul(&noise_level)?)?;
        let target = if self.v_prediction {
            (noise.broadcast_mul(&signal)? - latents.broadcast_mul(&noise_level)?)?
        } else {
            noise.clone()
        };
        let times: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        let times = Tensor::from_vec(times, batch, device)?;
        // The UNet computes in its weights' dtype (mixed precision); the loss is f32.
        let dtype = unet.dtype();
        let added = added
            .map(|a| -> Result<AddedConditioning> {
                Ok(AddedConditioning {
                    text_embeds: a.text_embeds.to_dtype(dtype)?,
                    time_ids: a.time_ids.clone(),
                })
            })
            .transpose()?;
        let prediction = unet.forward_at(
            &noisy.to_dtype(dtype)?,
            &times,
            &context.to_dtype(dtype)?,
            added.as_ref(),
        )?;
        (prediction.to_dtype(DType::F32)? - target.to_dtype(DType::F32)?)?
            .sqr()?
            .mean_all()
    }
}
