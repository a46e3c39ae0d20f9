//! Separable resampling as PIL's `Image.resize` computes it (and torch's `interpolate(...,
//! antialias=True)`, ported from PIL): each output pixel is a normalised, filter-weighted sum
//! of the input pixels under a window that widens with the downscale factor. Pictures use
//! PIL's 8-bit arithmetic (22-bit fixed-point weights, rows first, clipped to a byte between
//! the passes) so a Lanczos resize matches PIL's to the byte; latents use f32.

use crate::protocol::ImageRgb8;

/// A resampling filter: its support (radius at scale 1) and weight function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Keys' cubic with a = -0.5 (PIL's BICUBIC, torch's antialiased bicubic).
    Bicubic,
    /// Lanczos with three lobes (PIL's LANCZOS).
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if x.abs() < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = x * std::f64::consts::PI;
        px.sin() / px
    }
}

/// For each output index: the first input index and the normalised weights from it on
/// (PIL's `precompute_coeffs`).
fn coefficients(n_in: usize, n_out: usize, filter: Filter) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..n_out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; then clamped into the input.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(n_in as i64).max(lo as i64 + 1) as usize;
            let mut w: Vec<f64> = (lo..hi).map(|i| filter.weight((i as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w)
        })
        .collect()
}

/// `planes` planes of `h` x `w` f32 values resized to `oh` x `ow` (columns first, then rows,
/// as torch's separable kernel).
pub fn resize_planes(data: &[f32], planes: usize, h: usize, w: usize, oh: usize, ow: usize, filter: Filter) -> Vec<f32> {
    let cx = coefficients(w, ow, filter);
    let cy = coefficients(h, oh, filter);
    let mut out = vec![0f32; planes * oh * ow];
    let mut rows = vec![0f32; h * ow];
    for p in 0..planes {
        let inp = &data[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            for (x, (lo, k)) in cx.iter().enumerate() {
                let src = &inp[y * w + lo..y * w + lo + k.len()];
                rows[y * ow + x] = src.iter().zip(k).map(|(v, k)| f64::from(*v) * k).sum::<f64>() as f32;
            }
        }
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for (y, (lo, k)) in cy.iter().enumerate() {
            for x in 0..ow {
                dst[y * ow + x] = k
                    .iter()
                    .enumerate()
                    .map(|(i, k)| f64::from(rows[(lo + i) * ow + x]) * k)
                    .sum::<f64>() as f32;
            }
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's fixed-point weights: rounded half away from zero at 22 bits.
fn fixed(k: &[f64]) -> Vec<i64> {
    let one = f64::from(1u32 << PRECISION_BITS);
    k.iter()
        .map(|v| if *v < 0.0 { (v * one - 0.5) as i64 } else { (v * one + 0.5) as i64 })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// An RGB picture resized as PIL's `Image.resize((ow, oh), filter)` for 8-bit RGB.
pub fn resize_image(img: &ImageRgb8, ow: u32, oh: u32, filter: Filter) -> ImageRgb8 {
    let (w, h, ow, oh) = (img.width as usize, img.height as usize, ow as usize, oh as usize);
    if (w, h) == (ow, oh) || w == 0 || h == 0 {
        return img.clone();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let horizontal = |src: &[u8], sw: usize, rows: usize| -> Vec<u8> {
        let c: Vec<(usize, Vec<i64>)> = coefficients(sw, ow, filter).into_iter().map(|(lo, k)| (lo, fixed(&k))).collect();
        let mut out = vec![0u8; rows * ow * 3];
        for y in 0..rows {
            for (x, (lo, k)) in c.iter().enumerate() {
                for ch in 0..3 {
                    let acc = k
                        .iter()
                        .enumerate()
                        .fold(half, |a, (i, k)| a + i64::from(src[(y * sw + lo + i) * 3 + ch]) * k);
                    out[(y * ow + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        out
    };
    let vertical = |src: &[u8], sw: usize, sh: usize| -> Vec<u8> {
        let c: Vec<(usize, Vec<i64>)> = coefficients(sh, oh, filter).into_iter().map(|(lo, k)| (lo, fixed(&k))).collect();
        let mut out = vec![0u8; oh * sw * 3];
        for (y, (lo, k)) in c.iter().enumerate() {
            for x in 0..sw {
                for ch in 0..3 {
                    let acc = k
                        .iter()
                        .enumerate()
                        .fold(half, |a, (i, k)| a + i64::from(src[((lo + i) * sw + x) * 3 + ch]) * k);
                    out[(y * sw + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        out
    };
    let pixels = match (w != ow, h != oh) {
        (true, true) => vertical(&horizontal(&img.pixels, w, h), ow, h),
        (true, false) => horizontal(&img.pixels, w, h),
        (false, true) => vertical(&img.pixels, w, h),
        (false, false) => img.pixels.clone(),
    };
    ImageRgb8 {
        width: ow as u32,
        height: oh as u32,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch.nn.functional.interpolate(..., mode="bicubic", antialias=True), torch 2.x.
    #[test]
    fn bicubic_matches_torch_antialiased() {
        let z: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let got = resize_planes(&z, 1, 3, 4, 7, 5, Filter::Bicubic);
        let want = TORCH_BICUBIC_AA_3X4_TO_7X5;
        assert!(got.iter().zip(want).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-5), "{got:?}");
    }

    /// PIL's Image.resize((11, 9), Image.LANCZOS) of a 6x5 RGB ramp, to the byte.
    #[test]
    fn lanczos_matches_pil() {
        let pixels: Vec<u8> = (0..5 * 6 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let img = ImageRgb8 {
            width: 6,
            height: 5,
            pixels,
        };
        let got = resize_image(&img, 11, 9, Filter::Lanczos);
        assert_eq!(got.pixels, PIL_LANCZOS_6X5_TO_11X9);
        let down = resize_image(&got, 4, 3, Filter::Lanczos);
        assert_eq!(down.pixels, PIL_LANCZOS_11X9_TO_4X3);
    }

    #[test]
    fn constants_stay_constant() {
        let z = vec![0.25f32; 2 * 5 * 3];
        let got = resize_planes(&z, 2, 5, 3, 13, 8, Filter::Lanczos);
        assert!(got.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }

    /// Printed by torch 2.15 and PIL 12 (see the tests above for the calls).
    #[rustfmt::skip]
    const TORCH_BICUBIC_AA_3X4_TO_7X5: [f64; 35] = [-0.42788392, 0.26347059, 1.11538506, 1.96729958, 2.65865445, 0.30022117, 0.99157566, 1.84349036, 2.69540524, 3.38675976, 1.92903042, 2.62038469, 3.47229958, 4.32421446, 5.01556873, 3.95673084, 4.64808512, 5.5, 6.35191488, 7.04326916, 5.98443174, 6.67578602, 7.5277009, 8.37961578, 9.07097054, 7.6132412, 8.30459499, 9.15651035, 10.00842571, 10.69977951, 8.34134579, 9.03269958, 9.88461494, 10.7365303, 11.4278841];
    #[rustfmt::skip]
    const PIL_LANCZOS_6X5_TO_11X9: [u8; 297] = [0, 0, 0, 0, 0, 0, 0, 5, 12, 11, 19, 26, 21, 29, 36, 34, 41, 48, 45, 52, 59, 55, 62, 69, 69, 76, 83, 82, 89, 96, 88, 95, 102, 22, 50, 57, 33, 56, 63, 59, 69, 76, 78, 83, 90, 86, 93, 100, 97, 105, 112, 109, 116, 123, 119, 126, 133, 133, 140, 147, 146, 153, 160, 152, 159, 166, 101, 128, 135, 112, 134, 141, 137, 147, 154, 156, 161, 168, 164, 171, 178, 175, 183, 190, 187, 194, 201, 197, 204, 211, 211, 218, 225, 224, 231, 238, 230, 237, 244, 218, 81, 83, 184, 86, 89, 107, 95, 102, 86, 108, 116, 111, 119, 126, 127, 131, 138, 135, 142, 149, 145, 152, 159, 159, 166, 173, 172, 179, 186, 178, 185, 192, 255, 1, 8, 191, 7, 14, 46, 20, 27, 0, 34, 41, 35, 44, 51, 55, 56, 63, 60, 67, 74, 70, 77, 84, 84, 91, 98, 97, 104, 111, 103, 110, 117, 171, 35, 81, 150, 51, 87, 99, 88, 100, 88, 111, 114, 109, 117, 124, 124, 128, 136, 133, 140, 147, 143, 150, 157, 157, 164, 171, 170, 177, 184, 176, 183, 190, 124, 150, 130, 127, 149, 136, 136, 146, 149, 149, 153, 163, 159, 166, 173, 171, 179, 185, 182, 189, 196, 192, 199, 206, 206, 213, 220, 219, 226, 233, 225, 232, 239, 207, 231, 50, 165, 188, 56, 76, 86, 69, 54, 54, 83, 77, 84, 93, 95, 102, 105, 102, 109, 116, 112, 119, 126, 126, 133, 140, 139, 146, 153, 145, 152, 159, 255, 255, 0, 197, 197, 0, 27, 33, 3, 0, 0, 17, 11, 18, 27, 32, 39, 39, 36, 43, 50, 46, 53, 60, 60, 67, 74, 73, 80, 87, 79, 86, 93];
    #[rustfmt::skip]
    const PIL_LANCZOS_11X9_TO_4X3: [u8; 36] = [60, 66, 68, 84, 91, 98, 117, 124, 131, 148, 155, 162, 157, 67, 86, 96, 111, 117, 138, 143, 150, 167, 174, 181, 145, 150, 63, 72, 78, 91, 112, 119, 124, 141, 148, 155];
}
