//! Every tensor a configuration's networks read, with its shape (mirroring the constructors in
//! clip.rs, unet.rs and vae.rs), and random weights of those shapes: the trainer initialises
//! from this list, benchmarks build SD 1.5/2.1/XL-sized models without a checkpoint.

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::weights::{Layout, Weights};
use crate::error::Result;

/// Every canonical tensor of `cfg` with its shape.
pub fn shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = vec![];
    let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
    let linear = |add: &mut dyn FnMut(String, Vec<usize>), p: String, o: usize, i: usize, bias: bool| {
        add(format!("{p}.weight"), vec![o, i]);
        if bias {
            add(format!("{p}.bias"), vec![o]);
        }
    };
    let norm = |add: &mut dyn FnMut(String, Vec<usize>), p: String, c: usize| {
        add(format!("{p}.weight"), vec![c]);
        add(format!("{p}.bias"), vec![c]);
    };
    let conv = |add: &mut dyn FnMut(String, Vec<usize>), p: String, o: usize, i: usize, k: usize| {
        add(format!("{p}.weight"), vec![o, i, k, k]);
        add(format!("{p}.bias"), vec![o]);
    };
    for t in &cfg.text {
        let p = t.prefix;
        add(format!("{p}embeddings.token_embedding.weight"), vec![t.vocab, t.hidden]);
        add(format!("{p}embeddings.position_embedding.weight"), vec![t.max_positions, t.hidden]);
        for l in 0..t.layers {
            let q = format!("{p}encoder.layers.{l}");
            norm(&mut add, format!("{q}.layer_norm1"), t.hidden);
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                linear(&mut add, format!("{q}.self_attn.{proj}"), t.hidden, t.hidden, true);
            }
            norm(&mut add, format!("{q}.layer_norm2"), t.hidden);
            linear(&mut add, format!("{q}.mlp.fc1"), t.intermediate, t.hidden, true);
            linear(&mut add, format!("{q}.mlp.fc2"), t.hidden, t.intermediate, true);
        }
        norm(&mut add, format!("{p}final_layer_norm"), t.hidden);
        if let Some(proj) = t.projection {
            linear(&mut add, format!("{p}text_projection"), proj, t.hidden, false);
        }
    }
    let u = &cfg.unet;
    let temb = u.time_embed_dim;
    let resnet = |add: &mut dyn FnMut(String, Vec<usize>), p: String, i: usize, o: usize, time: bool| {
        norm(add, format!("{p}.norm1"), i);
        conv(add, format!("{p}.conv1"), o, i, 3);
        if time {
            add(format!("{p}.time_emb_proj.weight"), vec![o, temb]);
            add(format!("{p}.time_emb_proj.bias"), vec![o]);
        }
        norm(add, format!("{p}.norm2"), o);
        conv(add, format!("{p}.conv2"), o, o, 3);
        if i != o {
            conv(add, format!("{p}.conv_shortcut"), o, i, 1);
        }
    };
    let transformer = |add: &mut dyn FnMut(String, Vec<usize>), p: String, c: usize, depth: usize| {
        norm(add, format!("{p}.norm"), c);
        for io in ["proj_in", "proj_out"] {
            if u.linear_projection {
                add(format!("{p}.{io}.weight"), vec![c, c]);
            } else {
                add(format!("{p}.{io}.weight"), vec![c, c, 1, 1]);
            }
            add(format!("{p}.{io}.bias"), vec![c]);
        }
        for k in 0..depth {
            let b = format!("{p}.transformer_blocks.{k}");
            for n in ["norm1", "norm2", "norm3"] {
                norm(add, format!("{b}.{n}"), c);
            }
            for (a, ctx) in [("attn1", c), ("attn2", u.context_dim)] {
                add(format!("{b}.{a}.to_q.weight"), vec![c, c]);
                add(format!("{b}.{a}.to_k.weight"), vec![c, ctx]);
                add(format!("{b}.{a}.to_v.weight"), vec![c, ctx]);
                add(format!("{b}.{a}.to_out.0.weight"), vec![c, c]);
                add(format!("{b}.{a}.to_out.0.bias"), vec![c]);
            }
            add(format!("{b}.ff.net.0.proj.weight"), vec![8 * c, c]);
            add(format!("{b}.ff.net.0.proj.bias"), vec![8 * c]);
            add(format!("{b}.ff.net.2.weight"), vec![c, 4 * c]);
            add(format!("{b}.ff.net.2.bias"), vec![c]);
        }
    };
    let ch = &u.block_out_channels;
    let n = ch.len();
    conv(&mut add, "unet.conv_in".into(), ch[0], u.in_channels, 3);
    linear(&mut add, "unet.time_embedding.linear_1".into(), temb, ch[0], true);
    linear(&mut add, "unet.time_embedding.linear_2".into(), temb, temb, true);
    if let Some((_, input)) = u.addition {
        linear(&mut add, "unet.add_embedding.linear_1".into(), temb, input, true);
        linear(&mut add, "unet.add_embedding.linear_2".into(), temb, temb, true);
    }
    let mut prev = ch[0];
    #[allow(clippy::needless_range_loop)] // i also names the block
    for i in 0..n {
        for j in 0..u.layers_per_block {
            let input = if j == 0 { prev } else { ch[i] };
            resnet(&mut add, format!("unet.down_blocks.{i}.resnets.{j}"), input, ch[i], true);
            if let Some(depth) = u.down_attention[i] {
                transformer(&mut add, format!("unet.down_blocks.{i}.attentions.{j}"), ch[i], depth);
            }
        }
        if i + 1 < n {
            conv(&mut add, format!("unet.down_blocks.{i}.downsamplers.0.conv"), ch[i], ch[i], 3);
        }
        prev = ch[i];
    }
    let top = ch[n - 1];
    resnet(&mut add, "unet.mid_block.resnets.0".into(), top, top, true);
    if let Some(depth) = u.mid_attention {
        transformer(&mut add, "unet.mid_block.attentions.0".into(), top, depth);
    }
    resnet(&mut add, "unet.mid_block.resnets.1".into(), top, top, true);
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    let mut prev_out = top;
    for i in 0..n {
        let out_c = rev[i];
        let in_c = rev[(i + 1).min(n - 1)];
        for j in 0..=u.layers_per_block {
            let skip = if j == u.layers_per_block { in_c } else { out_c };
            let res_in = if j == 0 { prev_out } else { out_c };
            resnet(&mut add, format!("unet.up_blocks.{i}.resnets.{j}"), res_in + skip, out_c, true);
            if let Some(depth) = u.up_attention[i] {
                transformer(&mut add, format!("unet.up_blocks.{i}.attentions.{j}"), out_c, depth);
            }
        }
        if i + 1 < n {
            conv(&mut add, format!("unet.up_blocks.{i}.upsamplers.0.conv"), out_c, out_c, 3);
        }
        prev_out = out_c;
    }
    norm(&mut add, "unet.conv_norm_out".into(), ch[0]);
    conv(&mut add, "unet.conv_out".into(), u.out_channels, ch[0], 3);
    let v = &cfg.vae;
    let vch: Vec<usize> = v.block_out_channels.iter().rev().copied().collect();
    conv(&mut add, "vae.post_quant_conv".into(), v.latent_channels, v.latent_channels, 1);
    conv(&mut add, "vae.decoder.conv_in".into(), vch[0], v.latent_channels, 3);
    resnet(&mut add, "vae.decoder.mid_block.resnets.0".into(), vch[0], vch[0], false);
    if v.mid_attention {
        let a = "vae.decoder.mid_block.attentions.0";
        norm(&mut add, format!("{a}.group_norm"), vch[0]);
        for l in ["to_q", "to_k", "to_v", "to_out.0"] {
            linear(&mut add, format!("{a}.{l}"), vch[0], vch[0], true);
        }
    }
    resnet(&mut add, "vae.decoder.mid_block.resnets.1".into(), vch[0], vch[0], false);
    let mut prev = vch[0];
    for (i, &c) in vch.iter().enumerate() {
        for j in 0..=v.layers_per_block {
            resnet(
                &mut add,
                format!("vae.decoder.up_blocks.{i}.resnets.{j}"),
                if j == 0 { prev } else { c },
                c,
                false,
            );
        }
        if i + 1 < vch.len() {
            conv(&mut add, format!("vae.decoder.up_blocks.{i}.upsamplers.0.conv"), c, c, 3);
        }
        prev = c;
    }
    norm(&mut add, "vae.decoder.conv_norm_out".into(), *vch.last().unwrap_or(&prev));
    conv(&mut add, "vae.decoder.conv_out".into(), 3, *vch.last().unwrap_or(&prev), 3);
    out
}

/// Random weights for `cfg` (weights ~ N(0, 1/fan_in), norms 1, biases 0).
pub fn random_weights(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Weights> {
    random_weights_where(cfg, dtype, device, |_| true)
}

/// Random weights for the tensors whose names `keep` accepts (e.g. only `vae.` for a VAE
/// benchmark that should not hold the UNet in memory).
pub fn random_weights_where(cfg: &ModelConfig, dtype: DType, device: &Device, keep: impl Fn(&str) -> bool) -> Result<Weights> {
    let mut tensors = HashMap::new();
    let mut shapes_map = HashMap::new();
    for (name, shape) in shapes(cfg).into_iter().filter(|(n, _)| keep(n)) {
        let t = if shape.len() == 1 {
            let is_norm_weight = name.ends_with(".weight");
            if is_norm_weight {
                Tensor::ones(shape.clone(), dtype, device)?
            } else {
                Tensor::zeros(shape.clone(), dtype, device)?
            }
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(0f32, (1.0 / fan_in.max(1) as f64).sqrt() as f32, shape.clone(), device)?.to_dtype(dtype)?
        };
        shapes_map.insert(name.clone(), shape);
        tensors.insert(name, t);
    }
    Ok(Weights {
        tensors,
        quantized: Default::default(),
        shapes: shapes_map,
        metadata: HashMap::new(),
        configs: HashMap::new(),
        unrecognised: vec![],
        layout: Layout::Diffusers,
        text_flavors: [None, None],
        stored_dtypes: BTreeSet::from([format!("{dtype:?}").to_lowercase()]),
        bytes: 0,
    })
}
