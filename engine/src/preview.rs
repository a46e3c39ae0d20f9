//! Cheap live previews: a linear projection of the 4 latent channels to RGB.
//!
//! Coefficients (facts.md; the same as ComfyUI's latent_rgb_factors) are applied to the clean
//! estimate `x0`; a model of our own may carry fitted ones in its metadata.

use candle_core::Tensor;

use crate::error::Result;
use crate::protocol::ImageRgb8;

/// A 4->3 linear map plus bias, applied per latent pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentRgb {
    pub weights: [[f32; 3]; 4],
    pub bias: [f32; 3],
}

impl LatentRgb {
    /// SD 1.x / 2.x latent space.
    pub const SD1: LatentRgb = LatentRgb {
        weights: [
            [0.337366, 0.216344, 0.257386],
            [0.165636, 0.386828, 0.046994],
            [-0.267803, 0.237036, 0.223517],
            [-0.178022, -0.200862, -0.678514],
        ],
        bias: [-0.017478, -0.055834, -0.105825],
    };
    /// SDXL latent space.
    pub const SDXL: LatentRgb = LatentRgb {
        weights: [
            [0.258303, 0.277640, 0.329699],
            [-0.299701, 0.105446, 0.014194],
            [0.050522, 0.186163, -0.143257],
            [-0.211938, -0.149892, -0.080036],
        ],
        bias: [0.144381, -0.033313, 0.007061],
    };

    /// Projects the first image of a `[b, c, h, w]` latent batch to an RGB image at latent
    /// resolution. Latent spaces with other than 4 channels give a grey-scale view of channel 0.
    pub fn project(&self, latents: &Tensor) -> Result<ImageRgb8> {
        let (_, c, h, w) = latents.dims4()?;
        let data: Vec<f32> = latents.get(0)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        let plane = h * w;
        let mut pixels = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for ch in 0..3 {
                let v = if c == 4 {
                    self.bias[ch] + (0..4).map(|k| data[k * plane + p] * self.weights[k][ch]).sum::<f32>()
                } else {
                    data[p] * 0.25
                };
                pixels.push(to_u8((v + 1.0) / 2.0));
            }
        }
        Ok(ImageRgb8 {
            width: w as u32,
            height: h as u32,
            pixels,
        })
    }
}

/// [0, 1] -> 0..=255 with rounding, as diffusers' `numpy_to_pil`; NaN becomes 0.
pub fn to_u8(v: f32) -> u8 {
    if v.is_nan() { 0 } else { (v.clamp(0.0, 1.0) * 255.0).round() as u8 }
}
