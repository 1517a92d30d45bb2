//! AdamW as PyTorch's `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected
//! moments), with its state open: candle-nn's `AdamW` keeps its moments private, so a run
//! could not be checkpointed and resumed exactly with it.
//!
//! With [`AdamW::with_loss_scaling`] it also does what PyTorch's `GradScaler` does for f16
//! mixed precision: the loss is multiplied by a scale before backpropagation (so the f16
//! part of the graph carries gradients that do not underflow), gradients are divided by it
//! before the update, a step whose gradients are not finite is skipped and halves the
//! scale, and 2000 good steps in a row double it.
//!
//! Invariant: [`AdamW::state`] then [`AdamW::restore`] on a fresh optimiser over the same
//! variables (loss scaling included) continues bit for bit as the original would have.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var, bail};

use crate::lora::TensorMap;

#[derive(Debug, Clone, Copy)]
pub struct AdamWSettings {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    vars: Vec<Var>,
    /// First and second moments, per variable.
    moments: Vec<(Tensor, Tensor)>,
    /// Steps taken so far (skipped ones included).
    steps: usize,
    /// Updates applied so far: what bias correction counts (PyTorch's optimiser does not
    /// see a step the scaler skips).
    updates: usize,
    settings: AdamWSettings,
    scaler: Option<LossScaler>,
}

/// Dynamic loss scaling, with `GradScaler`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LossScaler {
    scale: f64,
    /// Updates in a row with finite gradients since the scale last changed.
    good_steps: usize,
}

const GROWTH_INTERVAL: usize = 2000;

impl AdamW {
    pub fn new(vars: Vec<Var>, settings: AdamWSettings) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            vars,
            moments,
            steps: 0,
            updates: 0,
            settings,
            scaler: None,
        })
    }

    /// Scales losses, starting at `initial_scale` (PyTorch: 65536), for f16 training.
    pub fn with_loss_scaling(mut self, initial_scale: f64) -> Self {
        self.scaler = Some(LossScaler {
            scale: initial_scale,
            good_steps: 0,
        });
        self
    }

    /// What to multiply the loss by before `backward` (1 without loss scaling).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.map_or(1.0, |s| s.scale)
    }

    /// One update from `grads` (variables without a gradient stay as they are), computed
    /// from a loss multiplied by [`loss_scale`](Self::loss_scale). Returns `false` when
    /// the gradients were not finite and the update was skipped (only with loss scaling).
    pub fn step(&mut self, grads: &GradStore) -> Result<bool> {
        self.steps += 1;
        let unscale = 1.0 / self.loss_scale();
        if let Some(scaler) = &mut self.scaler {
            let mut finite = true;
            for var in &self.vars {
                if let Some(grad) = grads.get(var.as_tensor()) {
                    let largest = grad.abs()?.max_all()?.to_dtype(candle_core::DType::F64)?;
                    finite &= largest.to_scalar::<f64>()?.is_finite();
                }
            }
            if !finite {
                scaler.scale *= 0.5;
                scaler.good_steps = 0;
                return Ok(false);
            }
            scaler.good_steps += 1;
            if scaler.good_steps == GROWTH_INTERVAL {
                scaler.scale *= 2.0;
                scaler.good_steps = 0;
            }
        }
        self.updates += 1;
        let s = self.settings;
        let t = self.updates as i32;
        let (correction1, correction2) = (1.0 - s.beta1.powi(t), 1.0 - s.beta2.powi(t));
        for (var, (m, v)) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let unscaled;
            let grad = if unscale == 1.0 {
                grad
            } else {
                unscaled = (grad * unscale)?;
                &unscaled
            };
            *m = ((&*m * s.beta1)? + (grad * (1.0 - s.beta1))?)?;
            *v = ((&*v * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
            let m_hat = (&*m / correction1)?;
            let v_hat = (&*v / correction2)?;
            let decayed = (var.as_tensor() * (1.0 - s.learning_rate * s.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + s.epsilon)?)?;
            var.set(&(decayed - (update * s.learning_rate)?)?)?;
        }
        Ok(true)
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Updates applied so far (steps the loss scaler skipped not counted).
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// The moments, named `m.<i>` and `v.<i>` by the variables' order, and with loss
    /// scaling its scale, count of good steps and of applied updates (`scaler`, f64).
    pub fn state(&self) -> Result<TensorMap> {
        let mut state: TensorMap = self
            .moments
            .iter()
            .enumerate()
            .flat_map(|(i, (m, v))| [(format!("m.{i}"), m.clone()), (format!("v.{i}"), v.clone())])
            .collect();
        if let Some(scaler) = self.scaler {
            state.insert(
                "scaler".to_owned(),
                Tensor::new(
                    &[scaler.scale, scaler.good_steps as f64, self.updates as f64],
                    &candle_core::Device::Cpu,
                )?,
            );
        }
        Ok(state)
    }

    /// Takes back a [`state`](Self::state) saved after `steps` updates.
    pub fn restore(&mut self, state: &TensorMap, steps: usize) -> Result<()> {
        for (i, (m, v)) in self.moments.iter_mut().enumerate() {
            let (Some(saved_m), Some(saved_v)) =
                (state.get(&format!("m.{i}")), state.get(&format!("v.{i}")))
            else {
                bail!("the optimiser state lacks the moments of variable {i}");
            };
            if saved_m.dims() != m.dims() || saved_v.dims() != v.dims() {
                bail!("the optimiser state's moments of variable {i} have another shape");
            }
            *m = saved_m.to_device(m.device())?.to_dtype(m.dtype())?;
            *v = saved_v.to_device(v.device())?.to_dtype(v.dtype())?;
        }
        if let Some(scaler) = &mut self.scaler {
            let Some(saved) = state.get("scaler") else {
                bail!("the optimiser state has no loss scale (it was saved without loss scaling)");
            };
            let values = saved.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            let [scale, good_steps, updates] = values[..] else {
                bail!("the optimiser state's loss scale is malformed");
            };
            *scaler = LossScaler {
                scale,
                good_steps: good_steps as usize,
            };
            self.steps = steps;
            self.updates = updates as usize;
            return Ok(());
        }
        self.steps = steps;
        self.updates = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn settings() -> AdamWSettings {
        AdamWSettings {
            learning_rate: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 1e-2,
        }
    }

    fn values(var: &Var) -> Vec<f32> {
        var.as_tensor().to_vec1::<f32>().unwrap()
    }

    /// With loss scaling, a scaled loss's gradients give the update the plain loss gives
    /// without it; a step with non-finite gradients is skipped and halves the scale; the
    /// state restores all of it.
    #[test]
    fn loss_scaling_unscales_skips_non_finite_steps_and_restores() {
        let start = Tensor::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let (plain_var, scaled_var) = (
            Var::from_tensor(&start).unwrap(),
            Var::from_tensor(&start).unwrap(),
        );
        let mut plain = AdamW::new(vec![plain_var.clone()], settings()).unwrap();
        let mut scaled = AdamW::new(vec![scaled_var.clone()], settings())
            .unwrap()
            .with_loss_scaling(1024.0);
        assert_eq!(scaled.loss_scale(), 1024.0);
        for _ in 0..3 {
            let loss = plain_var.as_tensor().sqr().unwrap().sum_all().unwrap();
            assert!(plain.step(&loss.backward().unwrap()).unwrap());
            let loss = scaled_var.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = (loss * scaled.loss_scale()).unwrap().backward().unwrap();
            assert!(scaled.step(&grads).unwrap());
        }
        for (a, b) in values(&plain_var).iter().zip(values(&scaled_var)) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }

        // An overflowing step: skipped, the scale halves, nothing moves.
        let before = values(&scaled_var);
        let loss = (scaled_var.as_tensor().sum_all().unwrap() * f64::INFINITY).unwrap();
        assert!(!scaled.step(&loss.backward().unwrap()).unwrap());
        assert_eq!(scaled.loss_scale(), 512.0);
        assert_eq!(values(&scaled_var), before);
        assert_eq!(
            scaled.steps(),
            4,
            "the skipped step counts as a training step"
        );

        // Restored into a fresh optimiser, the next step is the same.
        let state = scaled.state().unwrap();
        let copy_var = Var::from_tensor(scaled_var.as_tensor()).unwrap();
        let mut copy = AdamW::new(vec![copy_var.clone()], settings())
            .unwrap()
            .with_loss_scaling(65536.0);
        copy.restore(&state, scaled.steps()).unwrap();
        assert_eq!(copy.loss_scale(), 512.0);
        for (optimizer, var) in [(&mut scaled, &scaled_var), (&mut copy, &copy_var)] {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = (loss * optimizer.loss_scale()).unwrap().backward().unwrap();
            assert!(optimizer.step(&grads).unwrap());
        }
        assert_eq!(values(&scaled_var), values(&copy_var));
    }
}
