//! Key conversion from the checkpoint layouts users have to the engine's canonical names.
//!
//! Canonical names are diffusers' names under a component prefix: `unet.`, `vae.`, `te1.` and
//! `te2.` (text encoders without the `text_model.` prefix). These are pure functions over
//! strings so they can be table-tested; tensors that need reshaping (fused attention
//! projections, 1x1-conv attention in the VAE, transposed projections) are flagged by
//! [`Transform`].

/// What to do with a tensor's data besides renaming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    None,
    /// Take rows `[part * n/3, (part + 1) * n/3)` of a fused q/k/v projection.
    QkvPart(usize),
    /// `[c, c, 1, 1]` conv kernel used as a linear layer: drop the trailing unit dims.
    ConvToLinear,
    /// `[in, out]` matrix multiplied from the right: store as a `[out, in]` linear weight.
    Transpose,
}

/// One renamed tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renamed {
    pub name: String,
    pub transform: Transform,
}

fn plain(name: String) -> Vec<Renamed> {
    vec![Renamed {
        name,
        transform: Transform::None,
    }]
}

/// Converts one key of an LDM-layout single file. `layers_per_block` is the UNet's (counted
/// beforehand from `input_blocks`). Returns no names for keys that carry no weights the engine
/// uses (`position_ids`, EMA copies, ...), and `Err(key)` for keys it does not recognise.
pub fn ldm_key(key: &str, layers_per_block: usize) -> Result<Vec<Renamed>, String> {
    if let Some(rest) = key.strip_prefix("model.diffusion_model.") {
        return ldm_unet_key(rest, layers_per_block)
            .map(|n| plain(format!("unet.{n}")))
            .ok_or_else(|| key.to_string());
    }
    if let Some(rest) = key.strip_prefix("first_stage_model.") {
        return ldm_vae_key(rest)
            .map(|(n, t)| {
                vec![Renamed {
                    name: format!("vae.{n}"),
                    transform: t,
                }]
            })
            .ok_or_else(|| key.to_string());
    }
    if let Some(rest) = key.strip_prefix("cond_stage_model.transformer.") {
        return Ok(hf_text_key(rest).map(|n| plain(format!("te1.{n}"))).unwrap_or_default());
    }
    if let Some(rest) = key.strip_prefix("cond_stage_model.model.") {
        return openclip_key(rest, "te1").ok_or_else(|| key.to_string());
    }
    if let Some(rest) = key.strip_prefix("conditioner.embedders.0.transformer.") {
        return Ok(hf_text_key(rest).map(|n| plain(format!("te1.{n}"))).unwrap_or_default());
    }
    if let Some(rest) = key.strip_prefix("conditioner.embedders.1.model.") {
        return openclip_key(rest, "te2").ok_or_else(|| key.to_string());
    }
    if key.starts_with("model_ema.")
        || key.starts_with("cond_stage_model.model.logit_scale")
        || key == "alphas_cumprod"
        || key == "alphas_cumprod_prev"
        || key == "betas"
        || key.starts_with("sqrt_")
        || key.starts_with("log_one_minus")
        || key.starts_with("posterior_")
        || key == "model.alphas_cumprod"
        || key.starts_with("lvlb_weights")
        || key == "logvar"
    {
        return Ok(vec![]);
    }
    Err(key.to_string())
}

/// Converts a key of a diffusers folder's component (`unet`, `vae`, `text_encoder`,
/// `text_encoder_2`) to the canonical name; `None` for keys without weights the engine uses.
pub fn diffusers_key(component: &str, key: &str) -> Option<String> {
    match component {
        "unet" => Some(format!("unet.{key}")),
        "vae" => Some(format!("vae.{key}")),
        "text_encoder" => hf_text_key(key).map(|n| format!("te1.{n}")),
        "text_encoder_2" => hf_text_key(key).map(|n| format!("te2.{n}")),
        _ => None,
    }
}

/// Hugging Face CLIP names with or without the `text_model.` prefix (transformers >= 5.6
/// saves without it, real checkpoints have it).
fn hf_text_key(key: &str) -> Option<String> {
    let k = key.strip_prefix("text_model.").unwrap_or(key);
    if k.ends_with("position_ids") {
        return None;
    }
    Some(k.to_string())
}

fn openclip_key(rest: &str, te: &str) -> Option<Vec<Renamed>> {
    let one = |n: &str, t: Transform| {
        Some(vec![Renamed {
            name: format!("{te}.{n}"),
            transform: t,
        }])
    };
    match rest {
        "token_embedding.weight" => {
            return one("embeddings.token_embedding.weight", Transform::None);
        }
        "positional_embedding" => {
            return one("embeddings.position_embedding.weight", Transform::None);
        }
        "ln_final.weight" => return one("final_layer_norm.weight", Transform::None),
        "ln_final.bias" => return one("final_layer_norm.bias", Transform::None),
        "text_projection" => return one("text_projection.weight", Transform::Transpose),
        "logit_scale" => return Some(vec![]),
        _ => {}
    }
    let r = rest.strip_prefix("transformer.resblocks.")?;
    let (idx, tail) = r.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let p = format!("{te}.encoder.layers.{idx}");
    let sub = |s: &str| Renamed {
        name: format!("{p}.{s}"),
        transform: Transform::None,
    };
    let out = match tail {
        "attn.in_proj_weight" | "attn.in_proj_bias" => {
            let suffix = if tail.ends_with("weight") { "weight" } else { "bias" };
            ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(i, n)| Renamed {
                    name: format!("{p}.self_attn.{n}.{suffix}"),
                    transform: Transform::QkvPart(i),
                })
                .collect()
        }
        _ => {
            let mapped = tail
                .replacen("attn.out_proj.", "self_attn.out_proj.", 1)
                .replacen("ln_1.", "layer_norm1.", 1)
                .replacen("ln_2.", "layer_norm2.", 1)
                .replacen("mlp.c_fc.", "mlp.fc1.", 1)
                .replacen("mlp.c_proj.", "mlp.fc2.", 1);
            if mapped == tail {
                return None;
            }
            vec![sub(&mapped)]
        }
    };
    Some(out)
}

fn resnet_inner(tail: &str) -> Option<String> {
    let pairs = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    pairs.iter().find_map(|(a, b)| tail.strip_prefix(a).map(|r| format!("{b}{r}")))
}

fn is_resnet_tail(tail: &str) -> bool {
    resnet_inner(tail).is_some()
}

fn ldm_unet_key(rest: &str, lpb: usize) -> Option<String> {
    let simple = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    if let Some(n) = simple.iter().find_map(|(a, b)| rest.strip_prefix(a).map(|r| format!("{b}{r}"))) {
        return Some(n);
    }
    let split_idx = |s: &str| -> Option<(usize, usize, String)> {
        let (n, r) = s.split_once('.')?;
        let (m, r) = r.split_once('.')?;
        Some((n.parse().ok()?, m.parse().ok()?, r.to_string()))
    };
    if let Some(r) = rest.strip_prefix("input_blocks.") {
        let (n, m, tail) = split_idx(r)?;
        if n == 0 {
            return None;
        }
        let block = (n - 1) / (lpb + 1);
        let layer = (n - 1) % (lpb + 1);
        if layer == lpb {
            let t = tail.strip_prefix("op.")?;
            return Some(format!("down_blocks.{block}.downsamplers.0.conv.{t}"));
        }
        return match m {
            0 => resnet_inner(&tail).map(|t| format!("down_blocks.{block}.resnets.{layer}.{t}")),
            1 => Some(format!("down_blocks.{block}.attentions.{layer}.{tail}")),
            _ => None,
        };
    }
    if let Some(r) = rest.strip_prefix("middle_block.") {
        let (m, tail) = r.split_once('.')?;
        return match m {
            "0" => resnet_inner(tail).map(|t| format!("mid_block.resnets.0.{t}")),
            "1" => Some(format!("mid_block.attentions.0.{tail}")),
            "2" => resnet_inner(tail).map(|t| format!("mid_block.resnets.1.{t}")),
            _ => None,
        };
    }
    if let Some(r) = rest.strip_prefix("output_blocks.") {
        let (n, m, tail) = split_idx(r)?;
        let block = n / (lpb + 1);
        let layer = n % (lpb + 1);
        if m == 0 {
            return resnet_inner(&tail).map(|t| format!("up_blocks.{block}.resnets.{layer}.{t}"));
        }
        if let Some(t) = tail.strip_prefix("conv.") {
            return Some(format!("up_blocks.{block}.upsamplers.0.conv.{t}"));
        }
        if m == 1 && !is_resnet_tail(&tail) {
            return Some(format!("up_blocks.{block}.attentions.{layer}.{tail}"));
        }
        return None;
    }
    None
}

fn ldm_vae_key(rest: &str) -> Option<(String, Transform)> {
    let t0 = |s: String| Some((s, Transform::None));
    for p in ["quant_conv.", "post_quant_conv."] {
        if rest.starts_with(p) {
            return t0(rest.to_string());
        }
    }
    let (part, r) = if let Some(r) = rest.strip_prefix("encoder.") {
        ("encoder", r)
    } else {
        ("decoder", rest.strip_prefix("decoder.")?)
    };
    let simple = [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("norm_out.", "conv_norm_out."),
    ];
    if let Some(n) = simple.iter().find_map(|(a, b)| r.strip_prefix(a).map(|x| format!("{part}.{b}{x}"))) {
        return t0(n);
    }
    let resnet = |t: &str| t.replacen("nin_shortcut.", "conv_shortcut.", 1);
    if let Some(x) = r.strip_prefix("mid.block_1.") {
        return t0(format!("{part}.mid_block.resnets.0.{}", resnet(x)));
    }
    if let Some(x) = r.strip_prefix("mid.block_2.") {
        return t0(format!("{part}.mid_block.resnets.1.{}", resnet(x)));
    }
    if let Some(x) = r.strip_prefix("mid.attn_1.") {
        let (layer, param) = x.split_once('.')?;
        let name = match layer {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        let tr = if layer != "norm" && param == "weight" {
            Transform::ConvToLinear
        } else {
            Transform::None
        };
        return Some((format!("{part}.mid_block.attentions.0.{name}.{param}"), tr));
    }
    let (blocks_kw, diff_kw, sampler) = if part == "encoder" {
        ("down.", "down_blocks", "downsample")
    } else {
        ("up.", "up_blocks", "upsample")
    };
    let x = r.strip_prefix(blocks_kw)?;
    let (n, tail) = x.split_once('.')?;
    let n: usize = n.parse().ok()?;
    // The decoder's `up.N` counts from the output side; diffusers' up_blocks from the input side.
    // The caller rewrites decoder block indices once the block count is known.
    let idx = if part == "decoder" { format!("@{n}") } else { n.to_string() };
    if let Some(t) = tail.strip_prefix("block.") {
        return t0(format!("{part}.{diff_kw}.{idx}.resnets.{}", resnet(t)));
    }
    if let Some(t) = tail.strip_prefix(&format!("{sampler}.conv.")) {
        return t0(format!("{part}.{diff_kw}.{idx}.{sampler}rs.0.conv.{t}"));
    }
    None
}

/// Resolves the `@N` placeholder of LDM decoder block indices (`up.N` counts from the output).
pub fn resolve_decoder_index(name: &str, num_up_blocks: usize) -> String {
    if let Some(pos) = name.find(".up_blocks.@") {
        let start = pos + ".up_blocks.@".len();
        let end = name[start..].find('.').map_or(name.len(), |e| start + e);
        if let Ok(n) = name[start..end].parse::<usize>()
            && n < num_up_blocks
        {
            return format!("{}.up_blocks.{}{}", &name[..pos], num_up_blocks - 1 - n, &name[end..]);
        }
    }
    name.to_string()
}

/// The LDM path of a diffusers UNet module path (`down_blocks.1.attentions.0.proj_in` ->
/// `input_blocks.4.1.proj_in`), for LoRA files named after LDM checkpoints. `up_attention[i]`
/// says whether up block `i` has attentions (its upsampler then sits at index 2, not 1).
pub fn unet_module_to_ldm(path: &str, lpb: usize, up_attention: &[bool]) -> Option<String> {
    let simple = [
        ("conv_in", "input_blocks.0.0"),
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
    ];
    if let Some((_, l)) = simple.iter().find(|(d, _)| *d == path) {
        return Some(l.to_string());
    }
    let resnet = |tail: &str| -> Option<String> {
        let pairs = [
            ("norm1", "in_layers.0"),
            ("conv1", "in_layers.2"),
            ("time_emb_proj", "emb_layers.1"),
            ("norm2", "out_layers.0"),
            ("conv2", "out_layers.3"),
            ("conv_shortcut", "skip_connection"),
        ];
        let (head, rest) = tail.split_once('.').map_or((tail, ""), |(h, r)| (h, r));
        let mapped = pairs.iter().find(|(d, _)| *d == head)?.1;
        Some(if rest.is_empty() {
            mapped.to_string()
        } else {
            format!("{mapped}.{rest}")
        })
    };
    let parts: Vec<&str> = path.splitn(5, '.').collect();
    match parts.as_slice() {
        ["down_blocks", i, "downsamplers", "0", rest] => {
            let i: usize = i.parse().ok()?;
            Some(format!(
                "input_blocks.{}.0.op{}",
                (i + 1) * (lpb + 1),
                rest.strip_prefix("conv").unwrap_or(rest)
            ))
        }
        ["down_blocks", i, kind, j, rest] => {
            let (i, j): (usize, usize) = (i.parse().ok()?, j.parse().ok()?);
            let idx = 1 + i * (lpb + 1) + j;
            match *kind {
                "resnets" => Some(format!("input_blocks.{idx}.0.{}", resnet(rest)?)),
                "attentions" => Some(format!("input_blocks.{idx}.1.{rest}")),
                _ => None,
            }
        }
        ["up_blocks", i, "upsamplers", "0", rest] => {
            let i: usize = i.parse().ok()?;
            let slot = if *up_attention.get(i)? { 2 } else { 1 };
            Some(format!("output_blocks.{}.{slot}.{rest}", i * (lpb + 1) + lpb))
        }
        ["up_blocks", i, kind, j, rest] => {
            let (i, j): (usize, usize) = (i.parse().ok()?, j.parse().ok()?);
            let idx = i * (lpb + 1) + j;
            match *kind {
                "resnets" => Some(format!("output_blocks.{idx}.0.{}", resnet(rest)?)),
                "attentions" => Some(format!("output_blocks.{idx}.1.{rest}")),
                _ => None,
            }
        }
        _ => {
            let (head, rest) = path.split_once('.')?;
            if head != "mid_block" {
                return None;
            }
            let (kind, r2) = rest.split_once('.')?;
            let (j, tail) = r2.split_once('.')?;
            match (kind, j) {
                ("resnets", "0") => Some(format!("middle_block.0.{}", resnet(tail)?)),
                ("attentions", "0") => Some(format!("middle_block.1.{tail}")),
                ("resnets", "1") => Some(format!("middle_block.2.{}", resnet(tail)?)),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, lpb: usize, expected: &[(&str, Transform)]) {
        let got = ldm_key(key, lpb).unwrap_or_else(|k| panic!("unrecognised {k}"));
        let want: Vec<Renamed> = expected
            .iter()
            .map(|(n, t)| Renamed {
                name: n.to_string(),
                transform: *t,
            })
            .collect();
        assert_eq!(got, want, "{key}");
    }

    #[test]
    fn ldm_names_table() {
        use Transform::*;
        type Case<'a> = (&'a str, usize, &'a [(&'a str, Transform)]);
        let cases: &[Case] = &[
            (
                "model.diffusion_model.time_embed.0.weight",
                2,
                &[("unet.time_embedding.linear_1.weight", None)],
            ),
            (
                "model.diffusion_model.label_emb.0.2.bias",
                2,
                &[("unet.add_embedding.linear_2.bias", None)],
            ),
            ("model.diffusion_model.input_blocks.0.0.weight", 2, &[("unet.conv_in.weight", None)]),
            (
                "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
                2,
                &[("unet.down_blocks.0.resnets.0.norm1.weight", None)],
            ),
            (
                "model.diffusion_model.input_blocks.2.1.proj_in.weight",
                2,
                &[("unet.down_blocks.0.attentions.1.proj_in.weight", None)],
            ),
            (
                "model.diffusion_model.input_blocks.3.0.op.weight",
                2,
                &[("unet.down_blocks.0.downsamplers.0.conv.weight", None)],
            ),
            (
                "model.diffusion_model.input_blocks.4.0.skip_connection.bias",
                2,
                &[("unet.down_blocks.1.resnets.0.conv_shortcut.bias", None)],
            ),
            (
                "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                2,
                &[("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", None)],
            ),
            (
                "model.diffusion_model.middle_block.2.out_layers.3.weight",
                2,
                &[("unet.mid_block.resnets.1.conv2.weight", None)],
            ),
            (
                "model.diffusion_model.output_blocks.2.1.conv.weight",
                2,
                &[("unet.up_blocks.0.upsamplers.0.conv.weight", None)],
            ),
            (
                "model.diffusion_model.output_blocks.5.2.conv.bias",
                2,
                &[("unet.up_blocks.1.upsamplers.0.conv.bias", None)],
            ),
            (
                "model.diffusion_model.output_blocks.4.1.norm.weight",
                2,
                &[("unet.up_blocks.1.attentions.1.norm.weight", None)],
            ),
            ("model.diffusion_model.out.2.weight", 2, &[("unet.conv_out.weight", None)]),
            (
                "first_stage_model.decoder.up.0.block.1.nin_shortcut.weight",
                2,
                &[("vae.decoder.up_blocks.@0.resnets.1.conv_shortcut.weight", None)],
            ),
            (
                "first_stage_model.decoder.mid.attn_1.q.weight",
                2,
                &[("vae.decoder.mid_block.attentions.0.to_q.weight", ConvToLinear)],
            ),
            (
                "first_stage_model.decoder.mid.attn_1.proj_out.bias",
                2,
                &[("vae.decoder.mid_block.attentions.0.to_out.0.bias", None)],
            ),
            (
                "first_stage_model.decoder.norm_out.weight",
                2,
                &[("vae.decoder.conv_norm_out.weight", None)],
            ),
            (
                "first_stage_model.encoder.down.1.downsample.conv.weight",
                2,
                &[("vae.encoder.down_blocks.1.downsamplers.0.conv.weight", None)],
            ),
            (
                "first_stage_model.post_quant_conv.weight",
                2,
                &[("vae.post_quant_conv.weight", None)],
            ),
            (
                "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight",
                2,
                &[("te1.encoder.layers.3.mlp.fc1.weight", None)],
            ),
            ("cond_stage_model.transformer.text_model.embeddings.position_ids", 2, &[]),
            (
                "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
                2,
                &[
                    ("te1.encoder.layers.0.self_attn.q_proj.bias", QkvPart(0)),
                    ("te1.encoder.layers.0.self_attn.k_proj.bias", QkvPart(1)),
                    ("te1.encoder.layers.0.self_attn.v_proj.bias", QkvPart(2)),
                ],
            ),
            (
                "cond_stage_model.model.transformer.resblocks.7.mlp.c_proj.weight",
                2,
                &[("te1.encoder.layers.7.mlp.fc2.weight", None)],
            ),
            (
                "conditioner.embedders.1.model.text_projection",
                2,
                &[("te2.text_projection.weight", Transpose)],
            ),
            (
                "conditioner.embedders.1.model.positional_embedding",
                2,
                &[("te2.embeddings.position_embedding.weight", None)],
            ),
            (
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias",
                2,
                &[("te1.final_layer_norm.bias", None)],
            ),
            ("model_ema.decay", 2, &[]),
        ];
        for (key, lpb, expected) in cases {
            check(key, *lpb, expected);
        }
    }

    /// The LDM path of every module round-trips through the LDM -> canonical conversion.
    #[test]
    fn unet_modules_map_back_to_ldm() {
        let cases = [
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
            ),
            ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
            ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
            ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
            ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
            ("up_blocks.1.attentions.2.proj_out", "output_blocks.5.1.proj_out"),
            ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
            ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
            ("time_embedding.linear_1", "time_embed.0"),
        ];
        for (d, l) in cases {
            let got = unet_module_to_ldm(d, 2, &[false, true, true]);
            assert_eq!(got.as_deref(), Some(l), "{d}");
            let back = ldm_key(&format!("model.diffusion_model.{l}.weight"), 2).expect("known");
            assert_eq!(back[0].name, format!("unet.{d}.weight"), "{l}");
        }
    }

    #[test]
    fn unknown_keys_are_reported() {
        assert_eq!(ldm_key("lora_unet_foo.alpha", 2), Err("lora_unet_foo.alpha".to_string()));
        assert!(ldm_key("model.diffusion_model.something_else.weight", 2).is_err());
    }

    #[test]
    fn decoder_indices_count_from_the_input_side() {
        assert_eq!(
            resolve_decoder_index("vae.decoder.up_blocks.@0.resnets.1.conv1.weight", 4),
            "vae.decoder.up_blocks.3.resnets.1.conv1.weight"
        );
        assert_eq!(
            resolve_decoder_index("vae.decoder.up_blocks.@3.upsamplers.0.conv.bias", 4),
            "vae.decoder.up_blocks.0.upsamplers.0.conv.bias"
        );
    }

    #[test]
    fn diffusers_text_keys_with_and_without_prefix() {
        assert_eq!(
            diffusers_key("text_encoder", "text_model.final_layer_norm.weight").as_deref(),
            Some("te1.final_layer_norm.weight")
        );
        assert_eq!(
            diffusers_key("text_encoder_2", "final_layer_norm.weight").as_deref(),
            Some("te2.final_layer_norm.weight")
        );
        assert_eq!(diffusers_key("text_encoder", "text_model.embeddings.position_ids"), None);
    }
}
