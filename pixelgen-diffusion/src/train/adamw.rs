//! AdamW as PyTorch's `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected
//! moments), with its state open: candle-nn's `AdamW` keeps its moments private, so a run
//! could not be checkpointed and resumed exactly with it.
//!
//! Invariant: [`AdamW::state`] then [`AdamW::restore`] on a fresh optimiser over the same
//! variables continues bit for bit as the original would have.

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
    /// Updates taken so far.
    steps: usize,
    settings: AdamWSettings,
}

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
            settings,
        })
    }

    /// One update from `grads` (variables without a gradient stay as they are).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let s = self.settings;
        let t = self.steps as i32;
        let (correction1, correction2) = (1.0 - s.beta1.powi(t), 1.0 - s.beta2.powi(t));
        for (var, (m, v)) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            *m = ((&*m * s.beta1)? + (grad * (1.0 - s.beta1))?)?;
            *v = ((&*v * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
            let m_hat = (&*m / correction1)?;
            let v_hat = (&*v / correction2)?;
            let decayed = (var.as_tensor() * (1.0 - s.learning_rate * s.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + s.epsilon)?)?;
            var.set(&(decayed - (update * s.learning_rate)?)?)?;
        }
        Ok(())
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The moments, named `m.<i>` and `v.<i>` by the variables' order.
    pub fn state(&self) -> TensorMap {
        self.moments
            .iter()
            .enumerate()
            .flat_map(|(i, (m, v))| [(format!("m.{i}"), m.clone()), (format!("v.{i}"), v.clone())])
            .collect()
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
        self.steps = steps;
        Ok(())
    }
}
