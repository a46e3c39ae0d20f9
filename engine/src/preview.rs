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

    /// Least-squares fit of the map from latent pixels (`n x 4`, row-major) to RGB in
    /// [-1, 1] (`n x 3`): what the embedded model stores, fitted on its own latent/image pairs.
    pub fn fit(latents: &[f32], rgb: &[f32]) -> Option<LatentRgb> {
        let n = latents.len() / 4;
        if n < 5 || rgb.len() != n * 3 {
            return None;
        }
        // Normal equations with a constant feature: (X^T X) b = X^T y, X = [latent, 1].
        let mut xtx = [[0f64; 5]; 5];
        let mut xty = [[0f64; 3]; 5];
        for i in 0..n {
            let x = [latents[i * 4], latents[i * 4 + 1], latents[i * 4 + 2], latents[i * 4 + 3], 1.0].map(f64::from);
            for a in 0..5 {
                for b in 0..5 {
                    xtx[a][b] += x[a] * x[b];
                }
                for c in 0..3 {
                    xty[a][c] += x[a] * f64::from(rgb[i * 3 + c]);
                }
            }
        }
        // Gauss-Jordan with partial pivoting (a tiny ridge keeps it regular).
        for (a, row) in xtx.iter_mut().enumerate() {
            row[a] += 1e-6;
        }
        for col in 0..5 {
            let pivot = (col..5).max_by(|&i, &j| xtx[i][col].abs().total_cmp(&xtx[j][col].abs()))?;
            xtx.swap(col, pivot);
            xty.swap(col, pivot);
            let d = xtx[col][col];
            if d.abs() < 1e-12 {
                return None;
            }
            let (pivot_x, pivot_y) = (xtx[col], xty[col]);
            for row in (0..5).filter(|&r| r != col) {
                let f = xtx[row][col] / d;
                for (a, p) in xtx[row].iter_mut().zip(pivot_x) {
                    *a -= f * p;
                }
                for (a, p) in xty[row].iter_mut().zip(pivot_y) {
                    *a -= f * p;
                }
            }
        }
        let coef = |a: usize, c: usize| (xty[a][c] / xtx[a][a]) as f32;
        Some(LatentRgb {
            weights: [0, 1, 2, 3].map(|a| [coef(a, 0), coef(a, 1), coef(a, 2)]),
            bias: [coef(4, 0), coef(4, 1), coef(4, 2)],
        })
    }

    /// As JSON for a checkpoint's `latent_studio` metadata (`latent_rgb`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"weights": self.weights, "bias": self.bias})
    }

    /// Fitted coefficients from a checkpoint's `latent_studio` metadata, when it has them.
    pub fn from_metadata(metadata: &std::collections::HashMap<String, String>) -> Option<LatentRgb> {
        let ours: serde_json::Value = serde_json::from_str(metadata.get("latent_studio")?).ok()?;
        let v = ours.get("latent_rgb")?;
        let row = |r: &serde_json::Value| -> Option<[f32; 3]> {
            let a = r.as_array()?;
            Some([a.first()?.as_f64()? as f32, a.get(1)?.as_f64()? as f32, a.get(2)?.as_f64()? as f32])
        };
        let w = v.get("weights")?.as_array()?;
        Some(LatentRgb {
            weights: [row(w.first()?)?, row(w.get(1)?)?, row(w.get(2)?)?, row(w.get(3)?)?],
            bias: row(v.get("bias")?)?,
        })
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_a_linear_map_and_round_trips_through_metadata() {
        let truth = LatentRgb::SD1;
        let mut rng = crate::rng::TorchRng::new(2);
        let latents = rng.randn_f32(4 * 500);
        let rgb: Vec<f32> = latents
            .chunks(4)
            .flat_map(|l| (0..3).map(move |c| truth.bias[c] + (0..4).map(|k| l[k] * truth.weights[k][c]).sum::<f32>()))
            .collect();
        let fit = LatentRgb::fit(&latents, &rgb).expect("fits");
        for k in 0..4 {
            for c in 0..3 {
                assert!((fit.weights[k][c] - truth.weights[k][c]).abs() < 1e-4, "{fit:?}");
            }
        }
        assert!(fit.bias.iter().zip(truth.bias).all(|(a, b)| (a - b).abs() < 1e-4));
        let meta = std::collections::HashMap::from([(
            "latent_studio".to_string(),
            serde_json::json!({"family": "sd1", "latent_rgb": fit.to_json()}).to_string(),
        )]);
        assert_eq!(LatentRgb::from_metadata(&meta), Some(fit));
        assert_eq!(LatentRgb::from_metadata(&Default::default()), None);
        assert_eq!(LatentRgb::fit(&latents[..8], &rgb[..6]), None, "too few pairs");
    }
}
