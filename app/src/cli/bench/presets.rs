//! The published SD 1.5, SD 2.1 and SDXL configurations, for benchmarks with random weights
//! of the real sizes (no checkpoint download): `--config sd15|sd21|sdxl`.

use latent_engine::nets::config::{Activation, DEFAULT_GUIDANCE, Family, ModelConfig, TextConfig, UnetConfig, VaeConfig};
use latent_engine::protocol::Prediction;

/// The published configurations by name: `sd15`, `sd21`, `sdxl`.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let clip_l = TextConfig {
        prefix: "te1.",
        vocab: 49408,
        hidden: 768,
        layers: 12,
        heads: 12,
        intermediate: 3072,
        max_positions: 77,
        activation: Activation::QuickGelu,
        projection: None,
        pad_token: 49407,
    };
    let vae = VaeConfig {
        latent_channels: 4,
        block_out_channels: vec![128, 256, 512, 512],
        layers_per_block: 2,
        groups: 32,
        scaling_factor: 0.18215,
        mid_attention: true,
    };
    Some(match name {
        "sd15" => ModelConfig {
            family: Family::Sd1,
            text: vec![clip_l],
            unet: UnetConfig {
                in_channels: 4,
                out_channels: 4,
                block_out_channels: vec![320, 640, 1280, 1280],
                layers_per_block: 2,
                down_attention: vec![Some(1), Some(1), Some(1), None],
                up_attention: vec![None, Some(1), Some(1), Some(1)],
                mid_attention: Some(1),
                heads: vec![8; 4],
                context_dim: 768,
                linear_projection: false,
                groups: 32,
                time_embed_dim: 1280,
                addition: None,
            },
            vae,
            prediction: Prediction::Epsilon,
            text_layer_base: 1,
            few_step: false,
            zero_terminal_snr: false,
            default_size: (512, 512),
            default_guidance: DEFAULT_GUIDANCE,
        },
        "sd21" => {
            let sd15 = preset("sd15")?;
            ModelConfig {
                family: Family::Sd2,
                text: vec![TextConfig {
                    hidden: 1024,
                    layers: 23,
                    heads: 16,
                    intermediate: 4096,
                    activation: Activation::Gelu,
                    pad_token: 0,
                    ..clip_l
                }],
                unet: UnetConfig {
                    heads: vec![5, 10, 20, 20],
                    context_dim: 1024,
                    linear_projection: true,
                    ..sd15.unet
                },
                prediction: Prediction::V,
                default_size: (768, 768),
                ..sd15
            }
        }
        "sdxl" => ModelConfig {
            family: Family::Sdxl,
            text: vec![
                clip_l.clone(),
                TextConfig {
                    prefix: "te2.",
                    hidden: 1280,
                    layers: 32,
                    heads: 20,
                    intermediate: 5120,
                    activation: Activation::Gelu,
                    projection: Some(1280),
                    pad_token: 0,
                    ..clip_l
                },
            ],
            unet: UnetConfig {
                in_channels: 4,
                out_channels: 4,
                block_out_channels: vec![320, 640, 1280],
                layers_per_block: 2,
                down_attention: vec![None, Some(2), Some(10)],
                up_attention: vec![Some(10), Some(2), None],
                mid_attention: Some(10),
                heads: vec![5, 10, 20],
                context_dim: 2048,
                linear_projection: true,
                groups: 32,
                time_embed_dim: 1280,
                addition: Some((256, 2816)),
            },
            vae: VaeConfig {
                scaling_factor: 0.13025,
                ..vae
            },
            prediction: Prediction::Epsilon,
            text_layer_base: 1,
            few_step: false,
            zero_terminal_snr: false,
            default_size: (1024, 1024),
            default_guidance: DEFAULT_GUIDANCE,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use latent_engine::nets::shapes::shapes;

    /// The shape plan reproduces the published parameter counts.
    #[test]
    fn presets_have_the_published_sizes() {
        let count = |cfg: &ModelConfig, prefix: &str| -> usize {
            shapes(cfg)
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum()
        };
        let sd15 = preset("sd15").expect("sd15");
        assert_eq!(count(&sd15, "unet."), 859_520_964);
        assert_eq!(count(&sd15, "te1."), 123_060_480);
        let sdxl = preset("sdxl").expect("sdxl");
        assert_eq!(count(&sdxl, "unet."), 2_567_463_684);
        let sd21 = preset("sd21").expect("sd21");
        assert_eq!(count(&sd21, "unet."), 865_910_724);
    }
}
