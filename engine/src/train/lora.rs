//! LoRA training on a frozen model: low-rank `up @ down` deltas on the UNet's attention
//! projections, trained with the same denoising objective, saved in kohya's format (the
//! format the LoRA panel, A1111 and ComfyUI read). The demo LoRA learns a drawing style from
//! the procedural set redrawn in that style; `--images` trains on the user's own pictures.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{EngineError, Result};
use crate::nets::weights::Weights;
use crate::protocol::ImageRgb8;
use crate::rng::TorchRng;

/// A style the procedural set can be redrawn in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Black outlines on white, like a colouring book.
    Outline,
}

impl Style {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "outline" => Some(Self::Outline),
            _ => None,
        }
    }

    /// Redraws an image in this style.
    pub fn apply(self, img: &ImageRgb8) -> ImageRgb8 {
        let (w, h) = (img.width as usize, img.height as usize);
        let px = |x: usize, y: usize| -> [i32; 3] {
            let i = (y * w + x) * 3;
            [i32::from(img.pixels[i]), i32::from(img.pixels[i + 1]), i32::from(img.pixels[i + 2])]
        };
        let mut out = vec![255u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let c = px(x, y);
                let edge = [(1i32, 0i32), (0, 1), (-1, 0), (0, -1)].iter().any(|(dx, dy)| {
                    let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i32 || ny >= h as i32 {
                        return false;
                    }
                    let n = px(nx as usize, ny as usize);
                    (0..3).map(|k| (c[k] - n[k]).abs()).sum::<i32>() > 60
                });
                if edge {
                    out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[20, 20, 20]);
                }
            }
        }
        ImageRgb8 {
            width: img.width,
            height: img.height,
            pixels: out,
        }
    }
}

/// Centre-crops to a square and resizes to `size` x `size` (area average when shrinking,
/// nearest when growing): how the user's pictures meet the model's training size.
pub fn fit_square(img: &ImageRgb8, size: u32) -> ImageRgb8 {
    let side = img.width.min(img.height).max(1);
    let (x0, y0) = ((img.width - side) / 2, (img.height - side) / 2);
    let mut pixels = Vec::with_capacity((size * size * 3) as usize);
    for ty in 0..size {
        let (sy0, sy1) = (y0 + ty * side / size, y0 + ((ty + 1) * side / size).max(ty * side / size + 1));
        for tx in 0..size {
            let (sx0, sx1) = (x0 + tx * side / size, x0 + ((tx + 1) * side / size).max(tx * side / size + 1));
            let mut acc = [0u32; 3];
            let mut n = 0u32;
            for y in sy0..sy1.min(img.height) {
                for x in sx0..sx1.min(img.width) {
                    let i = ((y * img.width + x) * 3) as usize;
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += u32::from(img.pixels.get(i + c).copied().unwrap_or(0));
                    }
                    n += 1;
                }
            }
            pixels.extend(acc.iter().map(|a| (a / n.max(1)) as u8));
        }
    }
    ImageRgb8 {
        width: size,
        height: size,
        pixels,
    }
}

/// Trainable low-rank deltas for a model's UNet attention projections.
pub struct LoraTrainable {
    /// (canonical module name, down `[rank, in]`, up `[out, rank]`).
    pub modules: Vec<(String, Var, Var)>,
    pub rank: usize,
    pub alpha: f32,
}

impl LoraTrainable {
    /// Deltas for every `attn1`/`attn2` `to_q`, `to_k`, `to_v`, `to_out.0` of the UNet;
    /// `down` random, `up` zero, so training starts from the model itself.
    pub fn new(base: &Weights, rank: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = TorchRng::new(seed);
        let mut names: Vec<&String> = base
            .tensors
            .keys()
            .filter(|k| {
                k.starts_with("unet.")
                    && (k.contains(".attn1.") || k.contains(".attn2."))
                    && ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"]
                        .iter()
                        .any(|s| k.ends_with(s))
            })
            .collect();
        names.sort();
        let mut modules = vec![];
        for n in names {
            let (o, i) = base.get(n)?.dims2()?;
            let down: Vec<f32> = rng.randn_f32(rank * i).into_iter().map(|v| v / (i as f32).sqrt()).collect();
            let down = Var::from_tensor(&Tensor::from_vec(down, (rank, i), device)?)?;
            let up = Var::zeros((o, rank), DType::F32, device)?;
            modules.push((n.trim_end_matches(".weight").to_string(), down, up));
        }
        if modules.is_empty() {
            return Err(EngineError::UnknownArchitecture(
                "the model's UNet has no attention layers to train a LoRA on".into(),
            ));
        }
        Ok(Self {
            modules,
            rank,
            alpha: rank as f32,
        })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.modules.iter().flat_map(|(_, d, u)| [d.clone(), u.clone()]).collect()
    }

    /// The model's weights with `W0 + (alpha / rank) * up @ down` in the trained modules
    /// (differentiable in the deltas only).
    pub fn weights(&self, base: &Weights) -> Result<Weights> {
        let mut w = base.clone();
        let scale = f64::from(self.alpha) / self.rank as f64;
        for (name, down, up) in &self.modules {
            let key = format!("{name}.weight");
            let w0 = base.get(&key)?.detach().to_dtype(DType::F32)?;
            let delta = up.as_tensor().matmul(down.as_tensor())?.affine(scale, 0.0)?;
            w.tensors.insert(key, (w0 + delta)?);
        }
        Ok(w)
    }

    /// Saves in kohya's format: `lora_unet_<module path with _>.lora_down.weight`,
    /// `.lora_up.weight`, `.alpha` (f16), with `metadata`.
    pub fn save_kohya(&self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
        let f16_bytes = |t: &Tensor| -> Result<Vec<u8>> {
            Ok(t.to_dtype(DType::F16)?
                .flatten_all()?
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect())
        };
        for (name, down, up) in &self.modules {
            let key = format!("lora_unet_{}", name.trim_start_matches("unet.").replace('.', "_"));
            data.push((
                format!("{key}.lora_down.weight"),
                down.as_tensor().dims().to_vec(),
                f16_bytes(down.as_tensor())?,
            ));
            data.push((
                format!("{key}.lora_up.weight"),
                up.as_tensor().dims().to_vec(),
                f16_bytes(up.as_tensor())?,
            ));
            data.push((
                format!("{key}.alpha"),
                vec![],
                half::f16::from_f32(self.alpha).to_le_bytes().to_vec(),
            ));
        }
        let views = data
            .iter()
            .map(|(n, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| EngineError::Other(format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| EngineError::Other(format!("saving the LoRA: {e}")))?;
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, bytes).map_err(|e| EngineError::Io {
            path: tmp.clone(),
            source: e,
        })?;
        std::fs::rename(&tmp, path).map_err(|e| EngineError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

/// What `latent-studio train-lora` was asked for.
pub struct LoraOptions {
    /// The model the LoRA is for.
    pub model: std::path::PathBuf,
    /// The `.safetensors` file to write (never an existing file).
    pub out: std::path::PathBuf,
    /// Training pictures: the user's (centre-cropped and resized to the model's size) or,
    /// when empty, the procedural set redrawn in `style`.
    pub images: Vec<(ImageRgb8, String)>,
    pub style: Style,
    pub steps: u64,
    pub batch: usize,
    pub rank: usize,
    pub lr: f64,
    pub seed: u64,
    pub data_seed: u64,
}

/// Trains a LoRA and saves it; returns the loss of the last 10 steps on average.
pub fn train_lora(o: &LoraOptions, mut log: impl FnMut(&str)) -> Result<f32> {
    use candle_nn::Optimizer;
    if o.out.exists() {
        return Err(EngineError::Io {
            path: o.out.clone(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "file exists; refusing to overwrite it"),
        });
    }
    let dev = Device::Cpu;
    let base = crate::checkpoint::load(&o.model, DType::F32, &dev)?;
    let name = o.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let cfg = crate::checkpoint::architecture::infer(&base, &name)?;
    let size = cfg.default_size.0;
    let lora = LoraTrainable::new(&base, o.rank.max(1), o.seed, &dev)?;
    let mut opt = super::adamw::AdamW::new(
        lora.vars(),
        candle_nn::ParamsAdamW {
            lr: o.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = TorchRng::new(o.seed ^ 0x10ea);
    let t0 = std::time::Instant::now();
    let mut recent = vec![];
    for step in 0..o.steps {
        let items: Vec<(ImageRgb8, String)> = (0..o.batch.max(1) as u64)
            .map(|k| {
                let i = step * o.batch as u64 + k;
                if o.images.is_empty() {
                    let s = super::dataset::sample(o.data_seed, i, size);
                    (o.style.apply(&s.image), s.caption)
                } else {
                    let (img, caption) = &o.images[(i as usize) % o.images.len()];
                    (fit_square(img, size), caption.clone())
                }
            })
            .collect();
        let b = super::trainer::images_batch(&items, &dev)?;
        let lat = super::trainer::encode_latents_with(&base, &cfg, &b.images)?;
        let loss = super::trainer::diffusion_loss_with(&lora.weights(&base)?, &cfg, &lat, &b.captions, &mut rng)?;
        opt.backward_step(&loss)?;
        recent.push(loss.to_scalar::<f32>()?);
        if recent.len() > 10 {
            recent.remove(0);
        }
        if (step + 1).is_multiple_of(10) || step + 1 == o.steps {
            let per = t0.elapsed().as_secs_f64() / (step + 1) as f64;
            log(&format!(
                "lora step {}/{} loss {:.4} ({per:.2} s/step)",
                step + 1,
                o.steps,
                recent.iter().sum::<f32>() / recent.len() as f32
            ));
        }
    }
    let metadata = HashMap::from([
        ("ss_network_module".to_string(), "networks.lora".to_string()),
        ("ss_network_dim".to_string(), lora.rank.to_string()),
        ("ss_network_alpha".to_string(), lora.alpha.to_string()),
        ("ss_base_model_version".to_string(), "sd_v1".to_string()),
        ("ss_steps".to_string(), o.steps.to_string()),
        (
            "latent_studio".to_string(),
            serde_json::json!({"trained_by": "latent-studio train-lora", "base_model": name,
                "data": if o.images.is_empty() { format!("procedural set, {:?} style", o.style) } else { format!("{} images", o.images.len()) }})
            .to_string(),
        ),
    ]);
    lora.save_kohya(&o.out, metadata)?;
    Ok(recent.iter().sum::<f32>() / recent.len().max(1) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dataset::sample;

    #[test]
    fn a_trained_lora_loads_as_kohya_and_applies_to_every_module() {
        let dev = Device::Cpu;
        let cfg = crate::train::model::tiny_config();
        let params = crate::train::params::Params::init(&crate::train::model::all_shapes(&cfg), 1, &dev).expect("init");
        let dir = std::env::temp_dir().join(format!("latent-lora-train-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let model = dir.join("tiny.safetensors");
        crate::train::run::export(&params, &cfg, &model, &Default::default(), None).expect("export");
        let out = dir.join("outline.safetensors");
        let _ = std::fs::remove_file(&out);
        let o = LoraOptions {
            model: model.clone(),
            out: out.clone(),
            images: vec![],
            style: Style::Outline,
            steps: 3,
            batch: 2,
            rank: 2,
            lr: 1e-3,
            seed: 1,
            data_seed: 1,
        };
        let loss = train_lora(&o, |_| {}).expect("trains");
        assert!(loss.is_finite());
        assert!(train_lora(&o, |_| {}).is_err(), "never overwrites");
        let file = crate::lora::LoraFile::open(&out).expect("a LoRA file");
        assert_ne!(file.target_family(), "SDXL");
        let mut pipe = crate::pipeline::Pipeline::load(&crate::protocol::ModelSpec::new(&model)).expect("model");
        let reports = pipe.apply_loras(&[(&file, 1.0, 1.0)]).expect("applies");
        assert_eq!(reports[0].applied, reports[0].total, "{}", reports[0].summary());
        assert!(reports[0].total >= 8, "attention projections of the tiny UNet");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pictures_are_cropped_to_the_centre_and_averaged_down() {
        // 6x4: a red left column band, green elsewhere; the centre square is columns 1..5.
        let mut pixels = vec![];
        for _y in 0..4 {
            for x in 0..6 {
                pixels.extend(if x == 0 { [255u8, 0, 0] } else { [0, 255, 0] });
            }
        }
        let img = ImageRgb8 {
            width: 6,
            height: 4,
            pixels,
        };
        let f = fit_square(&img, 2);
        assert_eq!((f.width, f.height), (2, 2));
        assert!(
            f.pixels.chunks(3).all(|p| p == [0, 255, 0]),
            "the red column is cropped away: {:?}",
            f.pixels
        );
        assert_eq!(fit_square(&img, 8).pixels.len(), 8 * 8 * 3);
    }

    #[test]
    fn outline_style_is_white_with_dark_edges() {
        let s = sample(1, 3, 64);
        let o = Style::Outline.apply(&s.image);
        let white = o.pixels.chunks(3).filter(|p| p[0] == 255).count();
        let dark = o.pixels.chunks(3).filter(|p| p[0] == 20).count();
        assert_eq!(white + dark, 64 * 64);
        assert!(dark > 40 && white > 64 * 64 / 2, "dark {dark}, white {white}");
    }
}
