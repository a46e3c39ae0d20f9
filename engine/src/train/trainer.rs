//! The two training objectives, on the engine's own networks built from [`Params`]:
//! the autoencoder (L1 reconstruction + a small KL term) and the text-conditioned denoiser
//! (epsilon prediction with the SD noise schedule, captions dropped 10% of the time so
//! classifier-free guidance works).

use candle_core::{D, DType, Device, Tensor};

use super::dataset;
use super::params::Params;
use crate::error::Result;
use crate::nets::clip::{ClipText, TextRequest};
use crate::nets::config::ModelConfig;
use crate::nets::unet::{Unet, UnetInput};
use crate::nets::vae::{VaeDecoder, VaeEncoder};
use crate::nets::weights::Weights;
use crate::protocol::ImageRgb8;
use crate::rng::TorchRng;
use crate::sampling::schedule::ModelSchedule;
use crate::tokenizer::ClipTokenizer;

/// A batch of training images in [-1, 1] with their captions.
pub struct Batch {
    pub images: Tensor,
    pub captions: Vec<String>,
}

/// Samples `indices` of the procedural set drawn with `seed`.
pub fn batch(seed: u64, indices: &[u64], size: u32, device: &Device) -> Result<Batch> {
    batch_mixed(seed, indices, size, &dataset::Mix::default(), device)
}

/// [`batch`] drawn as `mix` asks ([`dataset::sample_mixed`]).
pub fn batch_mixed(seed: u64, indices: &[u64], size: u32, mix: &dataset::Mix, device: &Device) -> Result<Batch> {
    let items: Vec<(ImageRgb8, String)> = indices
        .iter()
        .map(|&i| {
            let s = dataset::sample_mixed(seed, i, size, mix);
            (s.image, s.caption)
        })
        .collect();
    images_batch(&items, device)
}

/// A batch from images (all the same size) and captions.
pub fn images_batch(items: &[(ImageRgb8, String)], device: &Device) -> Result<Batch> {
    let (w, h) = items.first().map_or((0, 0), |(i, _)| (i.width as usize, i.height as usize));
    let mut pixels = Vec::with_capacity(items.len() * w * h * 3);
    for (img, _) in items {
        if img.width as usize != w || img.height as usize != h || img.pixels.len() != w * h * 3 {
            return Err(crate::error::EngineError::InvalidRequest(
                "training images must all have the same size".into(),
            ));
        }
        // HWC u8 -> CHW in [-1, 1].
        for c in 0..3 {
            pixels.extend((0..w * h).map(|p| f32::from(img.pixels[p * 3 + c]) / 127.5 - 1.0));
        }
    }
    let images = Tensor::from_vec(pixels, (items.len(), 3, h, w), device)?;
    Ok(Batch {
        images,
        captions: items.iter().map(|(_, c)| c.clone()).collect(),
    })
}

/// Reconstruction loss of the autoencoder (and its parts, for the log).
pub struct VaeLoss {
    pub total: Tensor,
    pub l1: f32,
    pub kl: f32,
}

/// `L1(decode(z), x) + kl_weight * KL(q(z|x) || N(0, 1))` with `z` sampled from the encoder.
pub fn vae_loss(params: &Params, cfg: &ModelConfig, images: &Tensor, rng: &mut TorchRng, kl_weight: f64) -> Result<VaeLoss> {
    let w = params.weights();
    let enc = VaeEncoder::new(&w, &cfg.vae)?;
    let dec = VaeDecoder::new(&w, &cfg.vae)?;
    let (mean, logvar) = enc.encode(images)?;
    let eps = rng.randn_like(&mean)?;
    let z = (&mean + ((&logvar * 0.5)?.exp()? * eps)?)?;
    let recon = dec.decode(&z)?;
    let l1 = (recon - images)?.abs()?.mean_all()?;
    let kl = (((mean.sqr()? + logvar.exp()?)? - 1.0)? - &logvar)?.mean_all()?.affine(0.5, 0.0)?;
    let total = l1.add(&kl.affine(kl_weight, 0.0)?)?;
    Ok(VaeLoss {
        l1: l1.to_scalar::<f32>()?,
        kl: kl.to_scalar::<f32>()?,
        total,
    })
}

/// Latents of `images` (the encoder's means, times the scaling factor), without gradients.
pub fn encode_latents(params: &Params, cfg: &ModelConfig, images: &Tensor) -> Result<Tensor> {
    encode_latents_with(&params.frozen_weights(), cfg, images)
}

/// [`encode_latents`] with given (frozen) weights.
pub fn encode_latents_with(w: &Weights, cfg: &ModelConfig, images: &Tensor) -> Result<Tensor> {
    let enc = VaeEncoder::new(w, &cfg.vae)?;
    let (mean, _) = enc.encode(images)?;
    Ok((mean.detach() * cfg.vae.scaling_factor)?)
}

/// Token rows for captions (the first 77-token window of each).
pub fn caption_tokens(captions: &[String], pad: u32) -> Result<Vec<Vec<u32>>> {
    let tok = ClipTokenizer::shared()?;
    Ok(captions
        .iter()
        .map(|c| tok.windows(c, pad).into_iter().next().unwrap_or_default())
        .collect())
}

/// The Min-SNR weighting's cap (5, the paper's choice).
const MIN_SNR_GAMMA: f64 = 5.0;

/// Loss weight of one sample at signal-to-noise ratio `snr`, for the model's parameterisation.
/// In terms of the error of the clean latent it implies, plain noise prediction weighs a
/// timestep by SNR: almost nothing at high noise, which is exactly where layout and colour,
/// what a prompt names, are decided, and a small model then learns the prompt very slowly.
/// Velocity prediction weighs by SNR + 1; we clip the low-noise end at Min-SNR-5 (Hang et al.
/// 2023), giving `min(SNR, 5) + 1` per clean-latent error: every noisy timestep counts, the
/// nearly clean ones (fine detail, easy) do not crowd them out. Noise-prediction models get
/// Min-SNR-5 alone (`min(SNR, 5) / SNR` on the noise error).
fn loss_weight(prediction: crate::protocol::Prediction, snr: f64) -> f64 {
    let snr = snr.max(1e-12);
    match prediction {
        crate::protocol::Prediction::Epsilon => snr.min(MIN_SNR_GAMMA) / snr,
        crate::protocol::Prediction::V => (snr.min(MIN_SNR_GAMMA) + 1.0) / (snr + 1.0),
    }
}

/// Mean squared error of the UNet's prediction (noise or velocity, the model's
/// parameterisation) at random timesteps, conditioned on the captions through the text
/// encoder (both trained), weighted per sample by [`loss_weight`].
pub fn diffusion_loss(params: &Params, cfg: &ModelConfig, latents: &Tensor, captions: &[String], rng: &mut TorchRng) -> Result<Tensor> {
    diffusion_loss_with(&params.weights(), cfg, latents, captions, rng)
}

/// [`diffusion_loss`] on given weights (a LoRA's: frozen model plus trainable deltas).
pub fn diffusion_loss_with(w: &Weights, cfg: &ModelConfig, latents: &Tensor, captions: &[String], rng: &mut TorchRng) -> Result<Tensor> {
    let text_cfg = &cfg.text[0];
    let te = ClipText::new(w, text_cfg)?;
    let unet = Unet::new(w, &cfg.unet)?;
    // Classifier-free guidance needs an unconditional model: drop 10% of the captions.
    let captions: Vec<String> = captions
        .iter()
        .map(|c| if rng.next_uniform_f32() < 0.1 { String::new() } else { c.clone() })
        .collect();
    let rows = caption_tokens(&captions, text_cfg.pad_token)?;
    let (context, pooled) = te.forward(
        &rows,
        TextRequest {
            layer_from_end: 1,
            final_norm: true,
            pooled: cfg.unet.addition.is_some(),
        },
    )?;
    let b = latents.dim(0)?;
    // The pipeline sends SDXL's size row (height, width, 0, 0, height, width) of the picture
    // it makes; sizes drawn at random here teach the model to ignore it, so it draws the same
    // at any size rather than something new at a size it never saw.
    let added = match pooled {
        Some(p) => {
            let mut size = || 8.0 * (4 + (rng.next_uniform_f64() * 29.0) as u32).min(32) as f32;
            let ids: Vec<f32> = (0..b)
                .flat_map(|_| {
                    let (h, w) = (size(), size());
                    [h, w, 0.0, 0.0, h, w]
                })
                .collect();
            Some((p.to_dtype(DType::F32)?, Tensor::from_vec(ids, (b, 6), latents.device())?))
        }
        None => None,
    };
    let schedule = ModelSchedule::for_model(cfg.zero_terminal_snr);
    let n = schedule.alphas_cumprod.len();
    let timesteps: Vec<f64> = (0..b)
        .map(|_| ((rng.next_uniform_f64() * n as f64) as usize).min(n - 1) as f64)
        .collect();
    let ab: Vec<f32> = timesteps.iter().map(|t| schedule.alphas_cumprod[*t as usize] as f32).collect();
    let dev = latents.device();
    let a = Tensor::from_vec(ab.iter().map(|v| v.sqrt()).collect::<Vec<_>>(), (b, 1, 1, 1), dev)?;
    let s = Tensor::from_vec(ab.iter().map(|v| (1.0 - v).sqrt()).collect::<Vec<_>>(), (b, 1, 1, 1), dev)?;
    let noise = rng.randn_like(latents)?;
    let noisy = (latents.broadcast_mul(&a)? + noise.broadcast_mul(&s)?)?;
    let pred = unet.forward(&UnetInput {
        sample: &noisy,
        timesteps: &timesteps,
        context: &context.to_dtype(DType::F32)?,
        added: added.as_ref().map(|(p, ids)| (p, ids)),
        token_merge: 0.0,
    })?;
    let weights: Vec<f32> = ab
        .iter()
        .map(|&v| loss_weight(cfg.prediction, f64::from(v) / (1.0 - f64::from(v)).max(1e-12)) as f32)
        .collect();
    let weights = Tensor::from_vec(weights, b, dev)?;
    let target = match cfg.prediction {
        crate::protocol::Prediction::Epsilon => noise,
        // v = sqrt(abar) * noise - sqrt(1 - abar) * x0
        crate::protocol::Prediction::V => (noise.broadcast_mul(&a)? - latents.broadcast_mul(&s)?)?,
    };
    let per_sample = (pred - target)?.sqr()?.flatten_from(1)?.mean(D::Minus1)?;
    Ok((per_sample * weights)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::all_shapes;
    use candle_nn::Optimizer;

    fn tiny() -> ModelConfig {
        crate::train::model::tiny_config()
    }

    #[test]
    fn both_objectives_learn_and_reach_every_parameter() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let params = Params::init(&all_shapes(&cfg), 1, &dev).expect("init");
        let data = batch(3, &[0, 1, 2, 3], 16, &dev).expect("batch");
        let mut rng = TorchRng::new(4);
        // Autoencoder: gradients reach every encoder and decoder tensor; the loss falls.
        let vae_vars = params.select(&["vae."]);
        let first = vae_loss(&params, &cfg, &data.images, &mut rng, 1e-4).expect("loss");
        let grads = first.total.backward().expect("backward");
        for (name, v) in params.vars.iter().filter(|(n, _)| n.starts_with("vae.")) {
            assert!(grads.get(v.as_tensor()).is_some(), "no gradient for {name}");
        }
        let mut opt = candle_nn::AdamW::new(
            vae_vars,
            candle_nn::ParamsAdamW {
                lr: 2e-3,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .expect("adamw");
        let mut last = first.l1;
        for _ in 0..25 {
            let l = vae_loss(&params, &cfg, &data.images, &mut rng, 1e-4).expect("loss");
            opt.backward_step(&l.total).expect("step");
            last = l.l1;
        }
        assert!(last < first.l1 * 0.8, "reconstruction did not improve: {} -> {last}", first.l1);
        // Denoiser: gradients reach the UNet and the text encoder (the tokens used).
        let lat = encode_latents(&params, &cfg, &data.images).expect("latents");
        let loss = diffusion_loss(&params, &cfg, &lat, &data.captions, &mut rng).expect("loss");
        let grads = loss.backward().expect("backward");
        let missing: Vec<&String> = params
            .vars
            .iter()
            .filter(|(n, _)| n.starts_with("unet.") || (n.starts_with("te1.") && !n.contains("position_embedding")))
            .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
            .map(|(n, _)| n)
            .collect();
        assert!(missing.is_empty(), "no gradient for {missing:?}");
        let mut opt = candle_nn::AdamW::new(
            params.select(&["unet.", "te1."]),
            candle_nn::ParamsAdamW {
                lr: 1e-3,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .expect("adamw");
        // Average over a few steps: single-step losses are noisy (random timesteps).
        let avg = |rng: &mut TorchRng, opt: &mut candle_nn::AdamW, train: bool| {
            let mut sum = 0f32;
            for _ in 0..8 {
                let l = diffusion_loss(&params, &cfg, &lat, &data.captions, rng).expect("loss");
                sum += l.to_scalar::<f32>().expect("scalar");
                if train {
                    opt.backward_step(&l).expect("step");
                }
            }
            sum / 8.0
        };
        let before = avg(&mut TorchRng::new(9), &mut opt, false);
        for _ in 0..5 {
            avg(&mut rng, &mut opt, true);
        }
        let after = avg(&mut TorchRng::new(9), &mut opt, false);
        assert!(after < before * 0.9, "denoising loss did not fall: {before} -> {after}");
    }

    #[test]
    fn loss_weights_follow_min_snr_for_both_parameterisations() {
        use crate::protocol::Prediction::{Epsilon, V};
        // Noise prediction: 1 up to SNR 5, then 5 / SNR.
        assert!((loss_weight(Epsilon, 0.01) - 1.0).abs() < 1e-12);
        assert!((loss_weight(Epsilon, 10.0) - 0.5).abs() < 1e-12);
        // Velocity: (min(SNR, 5) + 1) / (SNR + 1): 1 up to SNR 5, 6 / 11 at SNR 10.
        assert!((loss_weight(V, 0.0) - 1.0).abs() < 1e-9);
        assert!((loss_weight(V, 3.0) - 1.0).abs() < 1e-12);
        assert!((loss_weight(V, 10.0) - 6.0 / 11.0).abs() < 1e-12);
        // Per error of the clean latent (noise error = SNR x, velocity error = (SNR + 1) x),
        // velocity weighs the noisiest timesteps about 1 / SNR times more.
        let snr = 0.01;
        let x0_eps = loss_weight(Epsilon, snr) * snr;
        let x0_v = loss_weight(V, snr) * (snr + 1.0);
        assert!(x0_v / x0_eps > 50.0, "{x0_eps} vs {x0_v}");
    }

    #[test]
    fn checkpoints_save_and_resume_exactly() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let shapes = all_shapes(&cfg);
        let a = Params::init(&shapes, 1, &dev).expect("init");
        let b = Params::init(&shapes, 2, &dev).expect("init");
        let dir = std::env::temp_dir().join(format!("latent-train-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ckpt.safetensors");
        a.save(&path, [("step".to_string(), "7".to_string())].into()).expect("save");
        let meta = b.load(&path).expect("load");
        assert_eq!(meta.get("step").map(String::as_str), Some("7"));
        for ((n, va), (_, vb)) in a.vars.iter().zip(&b.vars) {
            let d = (va.as_tensor() - vb.as_tensor())
                .expect("sub")
                .abs()
                .expect("abs")
                .max_all()
                .expect("max")
                .to_scalar::<f32>()
                .expect("s");
            assert_eq!(d, 0.0, "{n}");
        }
        // The saved file is an ordinary checkpoint: the engine loads it.
        let w = crate::checkpoint::load(&path, DType::F32, &dev).expect("engine loads it");
        assert!(w.has("unet.conv_in.weight") && w.has("vae.encoder.conv_in.weight"));
        // `--autoencoder-from`: only the autoencoder comes from the file, also from an f16 export.
        let f16 = dir.join("model-f16.safetensors");
        a.save_as(&f16, DType::F16, std::collections::HashMap::new()).expect("save f16");
        let c = Params::init(&shapes, 3, &dev).expect("init");
        let before: Vec<Tensor> = c.vars.iter().map(|(_, v)| v.as_tensor().copy().expect("copy")).collect();
        c.load_prefix(&f16, "vae.").expect("load the autoencoder");
        for (((n, va), (_, vc)), old) in a.vars.iter().zip(&c.vars).zip(&before) {
            let (want, tol) = if n.starts_with("vae.") {
                (va.as_tensor(), 1e-2)
            } else {
                (old, 0.0)
            };
            let d = (want - vc.as_tensor())
                .and_then(|t| t.abs())
                .and_then(|t| t.max_all())
                .and_then(|t| t.to_scalar::<f32>())
                .expect("diff");
            assert!(d <= tol, "{n}: {d}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_embedded_architecture_fits_and_exports_to_a_loadable_checkpoint() {
        let dev = Device::Cpu;
        let cfg = crate::train::model::embedded_config();
        let shapes = all_shapes(&cfg);
        let scalars: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert!(scalars * 2 <= 25_000_000, "{scalars} parameters do not fit 25 MB in f16");
        let params = Params::init(&shapes, 1, &dev).expect("init");
        let dir = std::env::temp_dir().join(format!("latent-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("model.safetensors");
        let preview = crate::train::run::fit_preview(&params, &cfg, 3).expect("fit");
        crate::train::run::export(&params, &cfg, &path, &Default::default(), Some(&preview)).expect("export");
        assert!(std::fs::metadata(&path).expect("file").len() <= 25 << 20);
        // The engine's own loader infers exactly this architecture from the file.
        let pipe = crate::pipeline::Pipeline::load(&crate::protocol::ModelSpec::new(&path)).expect("loads");
        assert_eq!(pipe.config.unet, cfg.unet);
        assert_eq!(pipe.config.text, cfg.text);
        assert_eq!(pipe.config.vae, cfg.vae);
        assert_eq!(pipe.config.default_size, cfg.default_size);
        assert_eq!(
            pipe.config.prediction, cfg.prediction,
            "the parameterisation travels in the metadata"
        );
        assert_eq!(
            pipe.config.zero_terminal_snr, cfg.zero_terminal_snr,
            "so does the schedule it was trained on"
        );
        assert_eq!(pipe.preview_coefficients(), &preview, "the fitted preview travels in the metadata");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pooled_text_is_trained_exported_and_sampled_with() {
        let dev = Device::Cpu;
        let cfg = crate::train::model::with_pooled_text(tiny());
        assert_eq!(cfg.unet.addition, Some((8, 16 + 6 * 8)));
        let params = Params::init(&all_shapes(&cfg), 1, &dev).expect("init");
        let data = batch(3, &[0, 1, 2, 3], 16, &dev).expect("batch");
        let lat = encode_latents(&params, &cfg, &data.images).expect("latents");
        let loss = diffusion_loss(&params, &cfg, &lat, &data.captions, &mut TorchRng::new(4)).expect("loss");
        let grads = loss.backward().expect("backward");
        for (name, v) in params.vars.iter().filter(|(n, _)| n.starts_with("unet.add_embedding.")) {
            let g = grads.get(v.as_tensor()).expect("a gradient for the pooled path");
            let norm = g.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).expect("norm");
            assert!(norm > 0.0, "zero gradient for {name}");
        }
        // Exported, the engine loads the same architecture and samples with the pooled prompt.
        let dir = std::env::temp_dir().join(format!("latent-pooled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("model.safetensors");
        crate::train::run::export(&params, &cfg, &path, &Default::default(), None).expect("export");
        let pipe = crate::pipeline::Pipeline::load(&crate::protocol::ModelSpec::new(&path)).expect("loads");
        assert_eq!(pipe.config.unet, cfg.unet);
        let run = |prompt: &str| {
            let req = crate::protocol::GenerateRequest {
                prompt: prompt.into(),
                width: 16,
                height: 16,
                steps: 2,
                ..Default::default()
            };
            let job = pipe.validate(&req).expect("valid");
            pipe.generate(&job, &mut crate::pipeline::Quiet).expect("generate").latents.data
        };
        assert_ne!(run("a red circle"), run("a blue star"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
