//! Tiny decoders of the TAESD family (madebyollin's `taesd`, `taesdxl`; diffusers'
//! `AutoencoderTiny` decoder): a few plain convolutions with ReLU residual blocks and
//! nearest-neighbour upsampling, fast enough to decode every step's preview. Input is the
//! UNet's latent space as it is (TAESD's scaling factor is 1); output in [-1, 1] as diffusers'.

use candle_core::Tensor;

use super::layers::{Conv2d, apply, conv2d};
use super::weights::Weights;
use crate::error::{EngineError, Result};

enum Layer {
    Conv(Conv2d),
    Relu,
    Upsample,
    /// `relu(conv(relu(conv(relu(conv(x))))) + skip(x))`.
    Block([Conv2d; 3], Option<Conv2d>),
}

/// A loaded tiny decoder (`checkpoint::load_tiny_decoder` gives its weights).
pub struct TinyDecoder {
    layers: Vec<Layer>,
    /// Latent channels it takes.
    pub latent_channels: usize,
}

impl TinyDecoder {
    /// Builds the layers from `taesd.N.*`: N with a `weight` is a convolution, with
    /// `conv.0.weight` a block; a number without weights is the ReLU after the first
    /// convolution, later ones upsample by 2.
    pub fn new(w: &Weights) -> Result<Self> {
        let max = w
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("taesd.")?.split_once('.')?.0.parse::<usize>().ok())
            .max()
            .ok_or_else(|| EngineError::UnknownArchitecture("tiny decoder without layers".into()))?;
        let mut layers = vec![];
        for i in 0..=max {
            let p = format!("taesd.{i}");
            if w.has(&format!("{p}.conv.0.weight")) {
                let c = |j: usize| conv2d(w, &format!("{p}.conv.{j}"), 1);
                let skip = if w.has(&format!("{p}.skip.weight")) {
                    Some(conv2d(w, &format!("{p}.skip"), 1)?)
                } else {
                    None
                };
                layers.push(Layer::Block([c(0)?, c(2)?, c(4)?], skip));
            } else if w.has(&format!("{p}.weight")) {
                layers.push(Layer::Conv(conv2d(w, &p, 1)?));
            } else if i == 1 {
                layers.push(Layer::Relu);
            } else {
                layers.push(Layer::Upsample);
            }
        }
        let latent_channels = w.get("taesd.0.weight")?.dims().get(1).copied().unwrap_or(4);
        Ok(Self { layers, latent_channels })
    }

    /// Decodes UNet-space latents `[b, c, h, w]` to images `[b, 3, 8h, 8w]` in [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.latent_channels {
            return Err(EngineError::InvalidRequest(format!(
                "this tiny decoder takes {} latent channels, the latents have {c}",
                self.latent_channels
            )));
        }
        let mut x = ((z / 3.0)?.tanh()? * 3.0)?;
        for l in &self.layers {
            x = match l {
                Layer::Conv(conv) => apply(conv, &x)?,
                Layer::Relu => x.relu()?,
                Layer::Upsample => {
                    let (_, _, h, w) = x.dims4()?;
                    x.upsample_nearest2d(h * 2, w * 2)?
                }
                Layer::Block([a, b, c], skip) => {
                    let h = apply(a, &x)?.relu()?;
                    let h = apply(b, &h)?.relu()?;
                    let h = apply(c, &h)?;
                    let s = match skip {
                        Some(s) => apply(s, &x)?,
                        None => x.clone(),
                    };
                    (h + s)?.relu()?
                }
            };
        }
        Ok(((x * 2.0)? - 1.0)?)
    }
}
