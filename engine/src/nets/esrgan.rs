//! ESRGAN-family upscalers (RRDBNet: ESRGAN, Real-ESRGAN x2/x4, 4x-UltraSharp style), as
//! spandrel implements them: a first convolution, residual-in-residual dense blocks around a
//! shortcut, nearest-neighbour 2x upsamplings each followed by a convolution, two final
//! convolutions; LeakyReLU(0.2). Weights under `esrgan.model.N...` (old-arch names; Real-ESRGAN
//! names are converted on reading). Large pictures run in overlapping tiles.

use candle_core::Tensor;

use super::layers::{Conv2d, apply, conv2d};
use super::weights::Weights;
use crate::error::{EngineError, Result};
use crate::protocol::ImageRgb8;

/// One residual dense block: five convolutions over the growing concatenation.
struct Rdb([Conv2d; 5]);

/// A loaded upscaler.
pub struct Esrgan {
    first: Conv2d,
    blocks: Vec<[Rdb; 3]>,
    body_last: Conv2d,
    ups: Vec<Conv2d>,
    hr0: Conv2d,
    hr1: Conv2d,
    /// Pixel-unshuffle factor of the input (Real-ESRGAN x2plus: 2), else 1.
    unshuffle: usize,
    /// Output size / input size.
    pub scale: usize,
}

fn lrelu(x: &Tensor) -> Result<Tensor> {
    // max(x, 0.2 x)
    Ok(x.maximum(&(x * 0.2)?)?)
}

impl Esrgan {
    /// Builds the network from `esrgan.model.*` weights.
    pub fn new(w: &Weights) -> Result<Self> {
        let p = "esrgan.model";
        let nb = (0..).take_while(|i| w.has(&format!("{p}.1.sub.{i}.RDB1.conv1.0.weight"))).count();
        if nb == 0 {
            return Err(EngineError::UnknownArchitecture("no RRDB blocks (model.1.sub.N.RDB1...)".into()));
        }
        let rdb = |i: usize, j: usize| -> Result<Rdb> {
            let c = |k: usize| conv2d(w, &format!("{p}.1.sub.{i}.RDB{j}.conv{k}.0"), 1);
            Ok(Rdb([c(1)?, c(2)?, c(3)?, c(4)?, c(5)?]))
        };
        let blocks = (0..nb)
            .map(|i| Ok([rdb(i, 1)?, rdb(i, 2)?, rdb(i, 3)?]))
            .collect::<Result<Vec<_>>>()?;
        // After the shortcut (index 1): convolutions at increasing indices; all but the last
        // two follow a 2x upsampling.
        let max = w
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("esrgan.model.")?.split_once('.')?.0.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let convs: Vec<Conv2d> = (2..=max)
            .filter(|i| w.has(&format!("{p}.{i}.weight")))
            .map(|i| conv2d(w, &format!("{p}.{i}"), 1))
            .collect::<Result<_>>()?;
        if convs.len() < 2 {
            return Err(EngineError::UnknownArchitecture("an RRDBNet without its final convolutions".into()));
        }
        let mut convs = convs;
        let hr1 = convs.pop().ok_or_else(|| EngineError::Other("hr1".into()))?;
        let hr0 = convs.pop().ok_or_else(|| EngineError::Other("hr0".into()))?;
        let in_nc = w.get(&format!("{p}.0.weight"))?.dims()[1];
        let unshuffle = match in_nc {
            3 => 1,
            12 => 2,
            48 => 4,
            n => return Err(EngineError::UnknownArchitecture(format!("an RRDBNet taking {n} input channels"))),
        };
        let scale = (1usize << convs.len()) / unshuffle;
        if scale == 0 {
            return Err(EngineError::UnknownArchitecture("an RRDBNet that shrinks".into()));
        }
        Ok(Self {
            first: conv2d(w, &format!("{p}.0"), 1)?,
            blocks,
            body_last: conv2d(w, &format!("{p}.1.sub.{nb}"), 1)?,
            ups: convs,
            hr0,
            hr1,
            unshuffle,
            scale,
        })
    }

    /// The network on `[1, 3, h, w]` in [0, 1] (h, w multiples of the unshuffle factor):
    /// `[1, 3, h * scale, w * scale]`, not clamped.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.unshuffle > 1 {
            pixel_unshuffle(x, self.unshuffle)?
        } else {
            x.clone()
        };
        let fea = apply(&self.first, &x)?;
        let mut h = fea.clone();
        for rrdb in &self.blocks {
            let input = h.clone();
            for Rdb(c) in rrdb {
                let x0 = h.clone();
                let x1 = lrelu(&apply(&c[0], &x0)?)?;
                let x2 = lrelu(&apply(&c[1], &Tensor::cat(&[&x0, &x1], 1)?)?)?;
                let x3 = lrelu(&apply(&c[2], &Tensor::cat(&[&x0, &x1, &x2], 1)?)?)?;
                let x4 = lrelu(&apply(&c[3], &Tensor::cat(&[&x0, &x1, &x2, &x3], 1)?)?)?;
                let x5 = apply(&c[4], &Tensor::cat(&[&x0, &x1, &x2, &x3, &x4], 1)?)?;
                h = ((x5 * 0.2)? + x0)?;
            }
            h = ((h * 0.2)? + input)?;
        }
        let mut h = (fea + apply(&self.body_last, &h)?)?;
        for up in &self.ups {
            let (_, _, hh, ww) = h.dims4()?;
            h = lrelu(&apply(up, &h.upsample_nearest2d(hh * 2, ww * 2)?)?)?;
        }
        let h = lrelu(&apply(&self.hr0, &h)?)?;
        apply(&self.hr1, &h)
    }

    /// Upscales a picture, in tiles of `tile` input pixels overlapping by `overlap` on every
    /// side (the overlap is computed and thrown away, so seams do not show).
    pub fn upscale(&self, img: &ImageRgb8, tile: usize, overlap: usize, device: &candle_core::Device) -> Result<ImageRgb8> {
        self.upscale_with(img, tile, overlap, device, &mut |_, _| true)
    }

    /// Tiles in a picture of `w` x `h` with tiles of `tile` pixels.
    pub fn tiles(w: u32, h: u32, tile: usize) -> u32 {
        let tile = tile.max(16);
        ((w as usize).div_ceil(tile) * (h as usize).div_ceil(tile)) as u32
    }

    /// [`Esrgan::upscale`] calling `each(done, total)` after every tile; it stops with
    /// `EngineError::Cancelled` when that returns false.
    pub fn upscale_with(
        &self,
        img: &ImageRgb8,
        tile: usize,
        overlap: usize,
        device: &candle_core::Device,
        each: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Result<ImageRgb8> {
        let total = Self::tiles(img.width, img.height, tile);
        let mut done = 0u32;
        let (w, h) = (img.width as usize, img.height as usize);
        let s = self.scale;
        let mut planar = vec![0f32; 3 * w * h];
        for (i, px) in img.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planar[c * w * h + i] = f32::from(px[c]) / 255.0;
            }
        }
        let x = Tensor::from_vec(planar, (1, 3, h, w), device)?;
        let mut out = vec![0u8; w * s * h * s * 3];
        let tile = tile.max(16);
        let mut y0 = 0;
        while y0 < h {
            let y1 = (y0 + tile).min(h);
            let mut x0 = 0;
            while x0 < w {
                let x1 = (x0 + tile).min(w);
                // The tile with its overlap, inside the picture, on the unshuffle grid.
                let m = self.unshuffle;
                let (py0, px0) = (y0.saturating_sub(overlap) / m * m, x0.saturating_sub(overlap) / m * m);
                let (py1, px1) = ((y1 + overlap).min(h), (x1 + overlap).min(w));
                let (py1, px1) = (py0 + (py1 - py0) / m * m, px0 + (px1 - px0) / m * m);
                let part = x.narrow(2, py0, py1 - py0)?.narrow(3, px0, px1 - px0)?;
                let up = self.forward(&part)?.clamp(0f32, 1f32)?;
                let up = up.squeeze(0)?;
                let (ow, oh) = ((px1 - px0) * s, (py1 - py0) * s);
                let data: Vec<f32> = up.flatten_all()?.to_vec1()?;
                for yy in y0 * s..(y1 * s).min((py1) * s) {
                    for xx in x0 * s..(x1 * s).min((px1) * s) {
                        let (ly, lx) = (yy - py0 * s, xx - px0 * s);
                        for c in 0..3 {
                            let v = data[c * oh * ow + ly * ow + lx];
                            out[(yy * w * s + xx) * 3 + c] = (v * 255.0).round() as u8;
                        }
                    }
                }
                x0 = x1;
                done += 1;
                if !each(done, total) {
                    return Err(EngineError::Cancelled { at_step: done });
                }
            }
            y0 = y1;
        }
        Ok(ImageRgb8 {
            width: (w * s) as u32,
            height: (h * s) as u32,
            pixels: out,
        })
    }
}

/// torch's `pixel_unshuffle`: `[b, c, h, w]` -> `[b, c * f * f, h / f, w / f]`.
fn pixel_unshuffle(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let t = x.reshape((b, c, h / f, f, w / f, f))?.permute((0, 1, 3, 5, 2, 4))?;
    Ok(t.reshape((b, c * f * f, h / f, w / f))?.contiguous()?)
}
