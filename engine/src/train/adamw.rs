//! AdamW in one pass per parameter.
//!
//! candle_nn's AdamW runs about a dozen tensor operations per parameter tensor (moments,
//! bias corrections, square root, division, decay), each allocating a new tensor: 0.13 s of
//! a 0.75 s embedded-model training step for its ~300 tensors. This is the same update
//! (decoupled weight decay, bias-corrected moments, `eps` added to the root of the second
//! moment) computed element by element in one loop, with the moments kept as plain vectors.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::ParamsAdamW;
use rayon::prelude::*;

struct Slot {
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The optimiser; a drop-in for `candle_nn::AdamW` (same [`candle_nn::Optimizer`] trait).
pub struct AdamW {
    slots: Vec<Slot>,
    params: ParamsAdamW,
    step_t: i32,
}

impl candle_nn::Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let slots = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|var| {
                let n = var.elem_count();
                Slot {
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Ok(Self { slots, params, step_t: 0 })
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let (b1, b2) = (p.beta1 as f32, p.beta2 as f32);
        let scale_m = (1.0 / (1.0 - p.beta1.powi(self.step_t))) as f32;
        let scale_v = (1.0 / (1.0 - p.beta2.powi(self.step_t))) as f32;
        let decay = (1.0 - p.lr * p.weight_decay) as f32;
        let (lr, eps) = (p.lr as f32, p.eps as f32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let t = slot.var.as_tensor();
            let dtype = t.dtype();
            let mut theta = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            let g = g.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            theta
                .par_chunks_mut(4096)
                .zip(slot.m.par_chunks_mut(4096))
                .zip(slot.v.par_chunks_mut(4096))
                .zip(g.par_chunks(4096))
                .for_each(|(((th, m), v), g)| {
                    for i in 0..th.len() {
                        m[i] = m[i] * b1 + g[i] * (1.0 - b1);
                        v[i] = v[i] * b2 + g[i] * g[i] * (1.0 - b2);
                        let step = (m[i] * scale_m) / ((v[i] * scale_v).sqrt() + eps);
                        th[i] = th[i] * decay - step * lr;
                    }
                });
            let next = Tensor::from_vec(theta, t.shape(), t.device())?.to_dtype(dtype)?;
            slot.var.set(&next)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    #[test]
    fn the_fused_update_matches_candles_adamw() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::TorchRng::new(1);
        let init = Tensor::from_vec(rng.randn_f32(5000), (50, 100), &dev).expect("init");
        let target = Tensor::from_vec(rng.randn_f32(5000), (50, 100), &dev).expect("target");
        let (a, b) = (Var::from_tensor(&init).expect("var"), Var::from_tensor(&init).expect("var"));
        let params = ParamsAdamW {
            lr: 3e-2,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut ours = AdamW::new(vec![a.clone()], params.clone()).expect("ours");
        let mut theirs = candle_nn::AdamW::new(vec![b.clone()], params).expect("candle");
        let loss = |v: &Var| (v.as_tensor() - &target).and_then(|d| d.sqr()).and_then(|d| d.sum_all());
        for step in 0..20 {
            if step == 10 {
                ours.set_learning_rate(1e-2);
                theirs.set_learning_rate(1e-2);
            }
            ours.backward_step(&loss(&a).expect("loss")).expect("step");
            theirs.backward_step(&loss(&b).expect("loss")).expect("step");
        }
        let d = (a.as_tensor() - b.as_tensor())
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        let moved = (a.as_tensor() - &init)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("moved");
        assert!(moved > 0.1, "the parameters should move: {moved}");
        assert!(d < 1e-5, "differs from candle's AdamW by {d}");
    }
}
