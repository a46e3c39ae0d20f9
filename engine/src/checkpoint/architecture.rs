//! Architecture inference: the configuration of each network read off its tensors.
//!
//! Shapes say almost everything (channels, depths, attention layout, context width, latent
//! channels); what they cannot say (head counts, group counts, prediction type, VAE scale)
//! comes from diffusers `config.json` files, the file's `__metadata__` (`latent_studio` JSON
//! entry, or `modelspec.prediction_type`), or the family's published defaults, in that order.

use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::nets::config::{Activation, DEFAULT_GUIDANCE, Family, ModelConfig, TextConfig, UnetConfig, VaeConfig};
use crate::nets::weights::{Layout, TextFlavor, Weights};
use crate::protocol::Prediction;

struct Hints<'a> {
    ours: Value,
    weights: &'a Weights,
}

impl Hints<'_> {
    fn new(w: &Weights) -> Hints<'_> {
        let ours = w
            .metadata
            .get("latent_studio")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        Hints { ours, weights: w }
    }
    fn cfg(&self, component: &str, key: &str) -> Option<&Value> {
        self.weights
            .configs
            .get(component)
            .and_then(|c| c.get(key))
            .filter(|v| !v.is_null())
    }
    fn ours_usize(&self, key: &str) -> Option<usize> {
        self.ours.get(key).and_then(Value::as_u64).map(|v| v as usize)
    }
}

fn dims(w: &Weights, name: &str) -> Result<Vec<usize>> {
    Ok(w.shape(name)?.to_vec())
}

fn count_indices(w: &Weights, prefix: &str) -> usize {
    w.names_with_prefix(prefix)
        .filter_map(|n| n[prefix.len()..].split_once('.').and_then(|(i, _)| i.parse::<usize>().ok()))
        .max()
        .map_or(0, |m| m + 1)
}

fn text_config(w: &Weights, h: &Hints, idx: usize) -> Result<Option<TextConfig>> {
    let prefix: &'static str = if idx == 0 { "te1." } else { "te2." };
    let emb = format!("{prefix}embeddings.token_embedding.weight");
    if !w.has(&emb) {
        return Ok(None);
    }
    let [vocab, hidden] = dims(w, &emb)?[..] else {
        return Err(EngineError::UnknownArchitecture(format!("{emb} is not a matrix")));
    };
    let max_positions = dims(w, &format!("{prefix}embeddings.position_embedding.weight"))?[0];
    let layers = count_indices(w, &format!("{prefix}encoder.layers."));
    let intermediate = dims(w, &format!("{prefix}encoder.layers.0.mlp.fc1.weight"))?[0];
    let projection = w.shapes.get(&format!("{prefix}text_projection.weight")).map(|s| s[0]);
    let component = if idx == 0 { "text_encoder" } else { "text_encoder_2" };
    let heads = h
        .cfg(component, "num_attention_heads")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .or_else(|| h.ours_usize(if idx == 0 { "text_heads" } else { "text_heads_2" }))
        .unwrap_or((hidden / 64).max(1));
    let flavor = w.text_flavors[idx];
    let ours_act = h.ours.get(if idx == 0 { "text_activation" } else { "text_activation_2" });
    let activation = match h.cfg(component, "hidden_act").or(ours_act).and_then(Value::as_str) {
        Some("quick_gelu") => Activation::QuickGelu,
        Some(_) => Activation::Gelu,
        None => match flavor {
            Some(TextFlavor::OpenAi) => Activation::QuickGelu,
            Some(TextFlavor::OpenClip) => Activation::Gelu,
            None => {
                if hidden == 768 {
                    Activation::QuickGelu
                } else {
                    Activation::Gelu
                }
            }
        },
    };
    // OpenAI CLIP pads with its end token; OpenCLIP's tokenizer pads with 0.
    let pad_token = if activation == Activation::QuickGelu { 49407 } else { 0 };
    if hidden % heads != 0 {
        return Err(EngineError::UnknownArchitecture(format!(
            "text encoder width {hidden} is not divisible by {heads} heads"
        )));
    }
    Ok(Some(TextConfig {
        prefix,
        vocab,
        hidden,
        layers,
        heads,
        intermediate,
        max_positions,
        activation,
        projection,
        pad_token,
    }))
}

fn attention_depth(w: &Weights, prefix: &str) -> Option<usize> {
    let n = count_indices(w, &format!("{prefix}.transformer_blocks."));
    (n > 0).then_some(n)
}

fn unet_config(w: &Weights, h: &Hints) -> Result<UnetConfig> {
    if !w.has("unet.conv_in.weight") {
        return Err(EngineError::UnknownArchitecture(
            "no UNet found (no 'model.diffusion_model.*' or unet/ weights)".into(),
        ));
    }
    let conv_in = dims(w, "unet.conv_in.weight")?;
    let conv_out = dims(w, "unet.conv_out.weight")?;
    let n_down = count_indices(w, "unet.down_blocks.");
    let n_up = count_indices(w, "unet.up_blocks.");
    if n_down == 0 || n_up != n_down {
        return Err(EngineError::UnknownArchitecture(format!(
            "UNet with {n_down} down and {n_up} up blocks"
        )));
    }
    let mut block_out_channels = vec![];
    let mut down_attention = vec![];
    for i in 0..n_down {
        block_out_channels.push(dims(w, &format!("unet.down_blocks.{i}.resnets.0.conv1.weight"))?[0]);
        down_attention.push(attention_depth(w, &format!("unet.down_blocks.{i}.attentions.0")));
    }
    let up_attention = (0..n_up)
        .map(|i| attention_depth(w, &format!("unet.up_blocks.{i}.attentions.0")))
        .collect();
    let mid_attention = attention_depth(w, "unet.mid_block.attentions.0");
    let layers_per_block = count_indices(w, "unet.down_blocks.0.resnets.");
    let attn_key = w
        .names_with_prefix("unet.")
        .find(|n| n.ends_with("attn2.to_k.weight"))
        .map(str::to_string)
        .ok_or_else(|| EngineError::UnknownArchitecture("UNet has no cross-attention layers".into()))?;
    let context_dim = dims(w, &attn_key)?[1];
    let proj_in = w
        .names_with_prefix("unet.")
        .find(|n| n.ends_with("proj_in.weight"))
        .map(str::to_string);
    let linear_projection = match proj_in {
        Some(p) => dims(w, &p)?.len() == 2,
        None => false,
    };
    let groups = h
        .cfg("unet", "norm_num_groups")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .or_else(|| h.ours_usize("norm_groups"))
        .unwrap_or(32);
    let from_list = |v: &Value| -> Option<Vec<usize>> {
        match v {
            Value::Number(n) => n.as_u64().map(|n| vec![n as usize; n_down]),
            Value::Array(a) => a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect(),
            _ => None,
        }
    };
    // diffusers names the head count `attention_head_dim` for SD 1/2 (a historical misnomer);
    // `num_attention_heads`, when present, wins.
    let heads = h
        .cfg("unet", "num_attention_heads")
        .and_then(from_list)
        .or_else(|| h.cfg("unet", "attention_head_dim").and_then(from_list))
        .or_else(|| h.ours.get("unet_heads").and_then(from_list))
        .unwrap_or_else(|| {
            // Without a config, the structure says it: SD 1.x UNets (convolutional `proj_in`)
            // have 8 heads in every block (diffusers' `attention_head_dim=8`), whatever the
            // text width; SD 2.x and SDXL (linear `proj_in`) 64-wide heads.
            if linear_projection {
                block_out_channels.iter().map(|c| (c / 64).max(1)).collect()
            } else {
                block_out_channels.iter().map(|c| if c % 8 == 0 { 8 } else { 1 }).collect()
            }
        });
    if heads.len() != n_down {
        return Err(EngineError::UnknownArchitecture(format!(
            "{} head counts for {n_down} UNet blocks",
            heads.len()
        )));
    }
    let time_embed_dim = dims(w, "unet.time_embedding.linear_1.weight")?[0];
    let addition = if w.has("unet.add_embedding.linear_1.weight") {
        let input = dims(w, "unet.add_embedding.linear_1.weight")?[1];
        let per_value = h
            .cfg("unet", "addition_time_embed_dim")
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .or_else(|| h.ours_usize("addition_time_embed_dim"))
            .or_else(|| {
                let pooled = w.shapes.get("te2.text_projection.weight").map(|s| s[0])?;
                input.checked_sub(pooled).filter(|r| r % 6 == 0).map(|r| r / 6)
            })
            .ok_or_else(|| EngineError::UnknownArchitecture("cannot tell the width of SDXL's size conditioning".into()))?;
        Some((per_value, input))
    } else {
        None
    };
    Ok(UnetConfig {
        in_channels: conv_in[1],
        out_channels: conv_out[0],
        block_out_channels,
        layers_per_block,
        down_attention,
        up_attention,
        mid_attention,
        heads,
        context_dim,
        linear_projection,
        groups,
        time_embed_dim,
        addition,
    })
}

fn vae_config(w: &Weights, h: &Hints, family: Family) -> Result<VaeConfig> {
    if !w.has("vae.decoder.conv_in.weight") {
        return Err(EngineError::UnknownArchitecture(format!(
            "no VAE decoder found (no 'first_stage_model.decoder.*' or vae/ weights){}",
            unet_only_hint(w)
        )));
    }
    let n_up = count_indices(w, "vae.decoder.up_blocks.");
    let mut channels = vec![];
    for i in 0..n_up {
        channels.push(dims(w, &format!("vae.decoder.up_blocks.{i}.resnets.0.conv2.weight"))?[0]);
    }
    channels.reverse();
    let layers_per_block = count_indices(w, "vae.decoder.up_blocks.0.resnets.").saturating_sub(1);
    let groups = h
        .cfg("vae", "norm_num_groups")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .or_else(|| h.ours_usize("norm_groups"))
        .unwrap_or(32);
    let scaling_factor = h
        .cfg("vae", "scaling_factor")
        .and_then(Value::as_f64)
        .or_else(|| h.ours.get("vae_scaling_factor").and_then(Value::as_f64))
        .unwrap_or(if family == Family::Sdxl { 0.13025 } else { 0.18215 });
    Ok(VaeConfig {
        latent_channels: dims(w, "vae.decoder.conv_in.weight")?[1],
        block_out_channels: channels,
        layers_per_block,
        groups,
        scaling_factor,
        mid_attention: w.has("vae.decoder.mid_block.attentions.0.to_q.weight"),
    })
}

fn prediction(w: &Weights, h: &Hints) -> Prediction {
    let parse = |s: &str| match s.to_ascii_lowercase().as_str() {
        "v" | "v_prediction" | "v-prediction" => Some(Prediction::V),
        "eps" | "epsilon" => Some(Prediction::Epsilon),
        _ => None,
    };
    h.ours
        .get("prediction_type")
        .and_then(Value::as_str)
        .and_then(parse)
        .or_else(|| w.metadata.get("modelspec.prediction_type").and_then(|s| parse(s)))
        .or_else(|| h.cfg("scheduler", "prediction_type").and_then(Value::as_str).and_then(parse))
        .or_else(|| w.metadata.get("v_pred").map(|_| Prediction::V))
        .unwrap_or(Prediction::Epsilon)
}

/// What to say when a file holds a UNet but not the rest.
fn unet_only_hint(w: &Weights) -> &'static str {
    if w.has("unet.conv_in.weight") {
        ": a UNet-only file takes its text encoders and VAE from a whole checkpoint of the same family (--components FILE; in the window, Components beside the VAE)"
    } else {
        ""
    }
}

/// The diffusers-style configs (`text_encoder`, `text_encoder_2`, `vae`) that carry what
/// `from`'s text encoders and VAE are (heads, activation, groups, scaling factor where `from`
/// says one) into another checkpoint's weights, whatever form `from` said them in (its
/// own configs, this project's metadata, defaults by flavour).
pub fn component_configs(from: &Weights) -> Result<Vec<(&'static str, Value)>> {
    let h = Hints::new(from);
    let mut out = vec![];
    for (idx, component) in ["text_encoder", "text_encoder_2"].into_iter().enumerate() {
        if let Some(t) = text_config(from, &h, idx)? {
            let mut c = from.configs.get(component).cloned().unwrap_or_else(|| serde_json::json!({}));
            c["num_attention_heads"] = t.heads.into();
            c["hidden_act"] = if t.activation == Activation::QuickGelu {
                "quick_gelu"
            } else {
                "gelu"
            }
            .into();
            out.push((component, c));
        }
    }
    if from.has("vae.decoder.conv_in.weight") {
        let mut c = from.configs.get("vae").cloned().unwrap_or_else(|| serde_json::json!({}));
        if let Some(g) = h
            .cfg("vae", "norm_num_groups")
            .and_then(Value::as_u64)
            .or_else(|| h.ours.get("norm_groups").and_then(Value::as_u64))
        {
            c["norm_num_groups"] = g.into();
        }
        if let Some(f) = h.cfg("vae", "scaling_factor").or_else(|| h.ours.get("vae_scaling_factor")) {
            c["scaling_factor"] = f.clone();
        }
        out.push(("vae", c));
    }
    Ok(out)
}

/// Infers the whole configuration; `name` (file or folder name) only feeds the few-step hint.
pub fn infer(w: &Weights, name: &str) -> Result<ModelConfig> {
    let h = Hints::new(w);
    let mut text = vec![];
    for i in 0..2 {
        if let Some(t) = text_config(w, &h, i)? {
            text.push(t);
        }
    }
    if text.is_empty() {
        return Err(EngineError::UnknownArchitecture(format!(
            "no text encoder found (no 'cond_stage_model.*', 'conditioner.*' or text_encoder/ weights){}",
            unet_only_hint(w)
        )));
    }
    let unet = unet_config(w, &h)?;
    let family = match h.ours.get("family").and_then(Value::as_str) {
        Some("sdxl") => Family::Sdxl,
        Some("sd2") => Family::Sd2,
        Some("sd1") => Family::Sd1,
        _ if text.len() == 2 || unet.addition.is_some() => Family::Sdxl,
        _ if text[0].activation == Activation::Gelu => Family::Sd2,
        _ => Family::Sd1,
    };
    if family == Family::Sdxl && (text.len() != 2 || unet.addition.is_none()) {
        return Err(EngineError::UnknownArchitecture(
            "SDXL-like UNet without both text encoders (refiner checkpoints are not supported yet)".into(),
        ));
    }
    let expected_context: usize = if family == Family::Sdxl {
        text.iter().map(|t| t.hidden).sum()
    } else {
        text[0].hidden
    };
    if expected_context != unet.context_dim {
        return Err(EngineError::UnknownArchitecture(format!(
            "the UNet attends to {}-wide text but the text encoder(s) produce {expected_context}",
            unet.context_dim
        )));
    }
    let vae = vae_config(w, &h, family)?;
    // An inpainting UNet also takes the mask and the masked image's latents.
    if unet.in_channels != vae.latent_channels && unet.in_channels != 2 * vae.latent_channels + 1 {
        return Err(EngineError::UnknownArchitecture(format!(
            "the VAE has {} latent channels but the UNet takes {} (neither the latents nor an inpainting model's latents + mask + masked image)",
            vae.latent_channels, unet.in_channels
        )));
    }
    let text_layer_base = if family == Family::Sd2 && w.layout == Layout::SingleFile {
        2
    } else {
        1
    };
    let lname = name.to_ascii_lowercase();
    let few_step = lname.contains("turbo") || lname.contains("lcm") || lname.contains("lightning");
    let native = match family {
        Family::Sdxl => 1024,
        Family::Sd2 if prediction(w, &h) == Prediction::V => 768,
        _ => 512,
    };
    // Tiny models trained at small sizes say so through their VAE/UNet widths: keep their
    // native latent size when the metadata gives it.
    let sample = h
        .ours_usize("sample_size")
        .or_else(|| h.cfg("unet", "sample_size").and_then(Value::as_u64).map(|v| v as usize));
    let size = sample.map(|s| (s * vae.scale()) as u32).unwrap_or(native);
    let default_guidance = h
        .ours
        .get("guidance")
        .and_then(Value::as_f64)
        .filter(|g| g.is_finite() && (1.0..=30.0).contains(g))
        .unwrap_or(if few_step { 1.0 } else { DEFAULT_GUIDANCE });
    let zero_terminal_snr = h
        .ours
        .get("rescale_betas_zero_snr")
        .and_then(Value::as_bool)
        .or_else(|| h.cfg("scheduler", "rescale_betas_zero_snr").and_then(Value::as_bool))
        .unwrap_or(false);
    Ok(ModelConfig {
        family,
        text,
        unet,
        prediction: prediction(w, &h),
        vae,
        text_layer_base,
        few_step,
        zero_terminal_snr,
        default_size: (size, size),
        default_guidance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_defaults_to_seven_and_to_one_for_few_step_models() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd1/sd1-tiny.safetensors");
        let w = crate::checkpoint::load(&path, candle_core::DType::F32, &candle_core::Device::Cpu).expect("fixture");
        assert_eq!(infer(&w, "sd1-tiny").expect("config").default_guidance, DEFAULT_GUIDANCE);
        let turbo = infer(&w, "sd_turbo").expect("config");
        assert!(turbo.few_step);
        assert_eq!(turbo.default_guidance, 1.0);
    }

    /// A single file without our metadata (a community SD 1.x file whose text width is not
    /// 768) gets SD 1.x's 8 heads from its convolutional `proj_in`, as its diffusers folder
    /// (`attention_head_dim: 8`) says; SD 2.x-style linear projections get 64-wide heads.
    #[test]
    fn unet_heads_follow_the_structure_not_the_text_width() {
        let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let load =
            |rel: &str| crate::checkpoint::load(&fixtures.join(rel), candle_core::DType::F32, &candle_core::Device::Cpu).expect("fixture");
        let mut single = load("sd1/sd1-tiny.safetensors");
        single.metadata.remove("latent_studio");
        let cfg = infer(&single, "community-sd1").expect("config");
        assert_ne!(cfg.unet.context_dim, 768);
        assert_eq!(cfg.unet.heads, vec![8, 8]);
        let mut folder = load("sd1/diffusers");
        if let Some(c) = folder.configs.get_mut("unet") {
            c["attention_head_dim"] = serde_json::json!(8);
        }
        assert_eq!(infer(&folder, "sd1-folder").expect("config").unet.heads, cfg.unet.heads);
        let mut sd2 = load("sd2/sd2-tiny.safetensors");
        sd2.metadata.remove("latent_studio");
        assert_eq!(infer(&sd2, "community-sd2").expect("config").unet.heads, vec![1, 1]);
    }
}
