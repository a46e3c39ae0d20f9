//! The hires fix's latent upscaling, as A1111's latent upscalers call torch's
//! `interpolate`: bilinear (`align_corners=False`, no antialiasing), nearest, or bicubic
//! with antialiasing (PIL's filter, see resample.rs).

use std::sync::Arc;

use candle_core::Tensor;

use super::Pipeline;
use super::resample::{Filter, resize_image};
use crate::error::{EngineError, Result};
use crate::nets::esrgan::Esrgan;
use crate::protocol::{Hires, HiresUpscaler, ImageRgb8, UpscaleRequest};

/// ESRGAN tiles (input pixels) and their overlap: A1111's defaults.
const MODEL_TILE: usize = 192;
const MODEL_OVERLAP: usize = 8;

impl Pipeline {
    /// The hires fix's pixel upscalers: `img` enlarged to `w` x `h` with PIL's Lanczos, or by
    /// the upscaler model (run until the picture is at least that size, at most three times,
    /// then Lanczos to the size, as A1111's `Upscaler.upscale`).
    pub(super) fn upscale_picture(&self, img: &ImageRgb8, w: u32, h: u32, hires: &Hires) -> Result<ImageRgb8> {
        let mut img = img.clone();
        if hires.upscaler == HiresUpscaler::Model {
            let net = self.upscaler(hires)?;
            for _ in 0..3 {
                if img.width >= w && img.height >= h {
                    break;
                }
                img = net.upscale(&img, MODEL_TILE, MODEL_OVERLAP, &self.device)?;
            }
        }
        Ok(resize_image(&img, w, h, Filter::Lanczos))
    }

    /// The hires upscaler model, read once and kept while the same file is asked for.
    fn upscaler(&self, hires: &Hires) -> Result<Arc<Esrgan>> {
        let path = hires
            .model
            .as_ref()
            .ok_or_else(|| EngineError::InvalidRequest("the hires upscaler model needs its file".into()))?;
        let mut cache = self.upscaler_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((p, net)) = cache.as_ref()
            && p == path
        {
            return Ok(net.clone());
        }
        let w = crate::checkpoint::load_upscaler(path, candle_core::DType::F32, &self.device)?;
        let net = Arc::new(Esrgan::new(&w)?);
        *cache = Some((path.clone(), net.clone()));
        Ok(net)
    }
}

/// The largest picture an upscale job takes (input pixels).
const MAX_UPSCALE_INPUT: u64 = 4096 * 4096;

/// Checks an upscale job before it runs; returns its tiles (its progress steps).
pub fn prepare_upscale(r: &UpscaleRequest) -> Result<u32> {
    let (w, h) = (r.image.width, r.image.height);
    if w == 0 || h == 0 || r.image.pixels.len() != (w as usize) * (h as usize) * 3 {
        return Err(EngineError::InvalidRequest("the picture to upscale is empty or broken".into()));
    }
    if u64::from(w) * u64::from(h) > MAX_UPSCALE_INPUT {
        return Err(EngineError::InvalidRequest(format!(
            "the picture is {w}x{h}; upscaling takes at most 4096x4096"
        )));
    }
    if !r.model.is_file() {
        return Err(EngineError::InvalidRequest(format!(
            "the upscaler {} is not a file",
            r.model.display()
        )));
    }
    Ok(Esrgan::tiles(w, h, r.tile as usize))
}

/// Runs an upscale job on `device`: the picture enlarged in tiles (progress per tile,
/// cancellable between tiles), its parameters kept with A1111's postprocess keys.
pub fn run_upscale(r: &UpscaleRequest, device: &candle_core::Device, hooks: &mut dyn super::Hooks) -> Result<super::Output> {
    let t0 = std::time::Instant::now();
    prepare_upscale(r)?;
    let w = crate::checkpoint::load_upscaler(&r.model, candle_core::DType::F32, device)?;
    let net = Esrgan::new(&w)?;
    let mut last = std::time::Instant::now();
    let image = net.upscale_with(&r.image, r.tile as usize, r.overlap as usize, device, &mut |done, total| {
        hooks.progress(done, total, last.elapsed());
        last = std::time::Instant::now();
        !hooks.cancelled()
    })?;
    let name = r
        .model
        .file_stem()
        .map_or_else(|| "upscaler".into(), |s| s.to_string_lossy().into_owned());
    let mut p = crate::metadata::Parameters::parse(&r.parameters).unwrap_or(crate::metadata::Parameters {
        prompt: String::new(),
        negative: String::new(),
        pairs: vec![],
    });
    p.push("Postprocess upscale by", net.scale);
    p.push("Postprocess upscaler", name);
    let metadata = p.to_text().trim_start().to_string();
    let total = t0.elapsed();
    Ok(super::Output {
        image,
        latents: crate::protocol::LatentsOut {
            shape: vec![],
            data: vec![],
        },
        metadata,
        timings: crate::protocol::Timings {
            denoise: total,
            total,
            ..Default::default()
        },
    })
}

/// `[1, c, h, w]` latents resized to `[1, c, oh, ow]`.
pub(super) fn upscale(z: &Tensor, oh: usize, ow: usize, how: HiresUpscaler) -> Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    let data: Vec<f32> = z.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
    if how == HiresUpscaler::LatentBicubicAntialiased {
        let out = super::resample::resize_planes(&data, b * c, h, w, oh, ow, super::resample::Filter::Bicubic);
        return Ok(Tensor::from_vec(out, (b, c, oh, ow), z.device())?);
    }
    let mut out = vec![0f32; b * c * oh * ow];
    // Source coordinate of output index `o` (torch: (o + 0.5) * in / out - 0.5, at least 0).
    let src = |o: usize, n_in: usize, n_out: usize| ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
    for plane in 0..b * c {
        let inp = &data[plane * h * w..(plane + 1) * h * w];
        let dst = &mut out[plane * oh * ow..(plane + 1) * oh * ow];
        for y in 0..oh {
            for x in 0..ow {
                dst[y * ow + x] = match how {
                    HiresUpscaler::LatentNearest => {
                        // torch's "nearest": floor(o * in / out).
                        let (sy, sx) = ((y * h / oh).min(h - 1), (x * w / ow).min(w - 1));
                        inp[sy * w + sx]
                    }
                    _ => {
                        let (fy, fx) = (src(y, h, oh), src(x, w, ow));
                        let (y0, x0) = ((fy as usize).min(h - 1), (fx as usize).min(w - 1));
                        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                        let (ly, lx) = ((fy - y0 as f64) as f32, (fx - x0 as f64) as f32);
                        let top = inp[y0 * w + x0] * (1.0 - lx) + inp[y0 * w + x1] * lx;
                        let bottom = inp[y1 * w + x0] * (1.0 - lx) + inp[y1 * w + x1] * lx;
                        top * (1.0 - ly) + bottom * ly
                    }
                };
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c, oh, ow), z.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(z: &Tensor, h: usize, w: usize, how: HiresUpscaler) -> Vec<f32> {
        upscale(z, h, w, how)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
            .expect("upscale")
    }

    /// torch.nn.functional.interpolate of [[1, 2], [3, 4]] to 4x4 (values from torch 2.x).
    #[test]
    fn matches_torch_interpolate() {
        let z = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &candle_core::Device::Cpu).expect("z");
        let bil = up(&z, 4, 4, HiresUpscaler::Latent);
        let want = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(bil, want);
        let near = up(&z, 4, 4, HiresUpscaler::LatentNearest);
        assert_eq!(near, [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
        // A non-integer factor, 3x4 -> 7x5 (torch's values to float rounding).
        let z = Tensor::arange(0f32, 12., &candle_core::Device::Cpu)
            .expect("z")
            .reshape((1, 1, 3, 4))
            .expect("shape");
        let got = up(&z, 7, 5, HiresUpscaler::Latent);
        let want = [
            0.0, 0.7, 1.5, 2.3, 3.0, 0.5714286, 1.2714286, 2.0714285, 2.8714285, 3.5714285, 2.2857144, 2.9857144, 3.7857144, 4.5857143,
            5.2857146, 4.0, 4.7, 5.5, 6.3, 7.0, 5.714286, 6.414286, 7.214286, 8.014285, 8.714286, 7.4285717, 8.128572, 8.928572, 9.728572,
            10.428572, 8.0, 8.7, 9.5, 10.3, 11.0,
        ];
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{got:?}");
    }
}
