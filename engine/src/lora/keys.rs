//! LoRA key conversion: from the names LoRA files use to the engine's canonical weight names.
//!
//! Pure functions over strings, table-tested. A file's module key (its tensor names minus the
//! LoRA suffix) is matched against aliases generated from the loaded model's own weights, so
//! every naming scheme resolves the same way: kohya (`lora_unet_<path with _>`, diffusers or
//! LDM paths; `lora_te_`, `lora_te1_`, `lora_te2_`), PEFT/diffusers (`unet.`, `text_encoder.`,
//! `text_encoder_2.` prefixes) and the old diffusers attention processors
//! (`...attn1.processor.to_q_lora`).

use std::collections::HashMap;

/// Everything a LoRA tensor name can end with, longest first, and its role.
pub const SUFFIXES: &[(&str, Part)] = &[
    (".lora_down.weight", Part::Down),
    (".lora_up.weight", Part::Up),
    (".lora_mid.weight", Part::Mid),
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_magnitude_vector.weight", Part::Magnitude),
    (".lora_magnitude_vector", Part::Magnitude),
    (".down.weight", Part::Down),
    (".up.weight", Part::Up),
    (".hada_w1_a", Part::HadaW1A),
    (".hada_w1_b", Part::HadaW1B),
    (".hada_w2_a", Part::HadaW2A),
    (".hada_w2_b", Part::HadaW2B),
    (".hada_t1", Part::HadaT1),
    (".hada_t2", Part::HadaT2),
    (".lokr_w1_a", Part::LokrW1A),
    (".lokr_w1_b", Part::LokrW1B),
    (".lokr_w2_a", Part::LokrW2A),
    (".lokr_w2_b", Part::LokrW2B),
    (".lokr_w1", Part::LokrW1),
    (".lokr_w2", Part::LokrW2),
    (".lokr_t2", Part::LokrT2),
    (".dora_scale", Part::Magnitude),
    (".alpha", Part::Alpha),
];

/// The role of one tensor of a LoRA module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Down,
    Up,
    Mid,
    Alpha,
    Magnitude,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
}

/// Splits a tensor name into its module key and role; `None` for names that are not LoRA
/// tensors (diffusers' `.diff` / `.diff_b` full deltas are reported as unmatched).
pub fn split(name: &str) -> Option<(String, Part)> {
    SUFFIXES
        .iter()
        .find_map(|(suffix, part)| name.strip_suffix(suffix).map(|m| (m.to_string(), *part)))
}

/// Normalises a module key to a lookup key: PEFT wrappers and processor names removed.
pub fn normalise(module: &str) -> String {
    let mut m = module.strip_prefix("base_model.model.").unwrap_or(module).to_string();
    // Old diffusers attention processors: `X.processor.to_q_lora` -> `X.to_q`,
    // `to_out_lora` -> `to_out.0`.
    if let Some(pos) = m.find(".processor.") {
        let head = &m[..pos];
        let tail = &m[pos + ".processor.".len()..];
        let leaf = tail.strip_suffix("_lora").unwrap_or(tail);
        let leaf = if leaf == "to_out" { "to_out.0" } else { leaf };
        m = format!("{head}.{leaf}");
    }
    if let Some(rest) = m.strip_prefix("text_encoder_2.") {
        return format!("te2.{}", rest.strip_prefix("text_model.").unwrap_or(rest));
    }
    if let Some(rest) = m.strip_prefix("text_encoder.") {
        return format!("te1.{}", rest.strip_prefix("text_model.").unwrap_or(rest));
    }
    m
}

/// Aliases of one canonical weight (`unet.X.weight`, `te1.X.weight`): every key a LoRA file
/// may use for the module that owns it. `ldm` is the UNet path in LDM naming, when known.
pub fn aliases(canonical: &str, ldm: Option<&str>) -> Vec<String> {
    let Some(module) = canonical.strip_suffix(".weight") else {
        return vec![];
    };
    let mut out = vec![module.to_string()];
    let underscored = |s: &str| s.replace('.', "_");
    if let Some(p) = module.strip_prefix("unet.") {
        out.push(format!("lora_unet_{}", underscored(p)));
        if let Some(l) = ldm {
            out.push(format!("lora_unet_{}", underscored(l)));
        }
    } else if let Some(p) = module.strip_prefix("te1.") {
        for prefix in ["lora_te_", "lora_te1_"] {
            out.push(format!("{prefix}text_model_{}", underscored(p)));
            out.push(format!("{prefix}{}", underscored(p)));
        }
    } else if let Some(p) = module.strip_prefix("te2.") {
        out.push(format!("lora_te2_text_model_{}", underscored(p)));
        out.push(format!("lora_te2_{}", underscored(p)));
    }
    out
}

/// Lookup table alias -> canonical weight name for a model's weights.
pub fn table<'a>(canonical: impl Iterator<Item = (&'a str, Option<String>)>) -> HashMap<String, String> {
    let mut t = HashMap::new();
    for (name, ldm) in canonical {
        for a in aliases(name, ldm.as_deref()) {
            t.entry(a).or_insert_with(|| name.to_string());
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_split() {
        assert_eq!(split("lora_unet_x.lora_down.weight"), Some(("lora_unet_x".into(), Part::Down)));
        assert_eq!(split("unet.a.b.lora_B.weight"), Some(("unet.a.b".into(), Part::Up)));
        assert_eq!(split("lora_unet_x.lokr_w1_a"), Some(("lora_unet_x".into(), Part::LokrW1A)));
        assert_eq!(split("lora_unet_x.lokr_w1"), Some(("lora_unet_x".into(), Part::LokrW1)));
        assert_eq!(split("lora_unet_x.alpha"), Some(("lora_unet_x".into(), Part::Alpha)));
        assert_eq!(split("lora_unet_x.diff"), None);
    }

    /// One case per naming scheme: (key in the file, canonical weight it must reach).
    #[test]
    fn every_naming_scheme_resolves() {
        let model = [
            (
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                Some("input_blocks.4.1.transformer_blocks.0.attn1.to_q".to_string()),
            ),
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight", None),
            (
                "unet.down_blocks.0.resnets.0.conv1.weight",
                Some("input_blocks.1.0.in_layers.2".to_string()),
            ),
            ("te1.encoder.layers.3.self_attn.q_proj.weight", None),
            ("te2.encoder.layers.0.mlp.fc1.weight", None),
        ];
        let t = table(model.iter().map(|(n, l)| (*n, l.clone())));
        let cases = [
            ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", model[0].0),
            ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", model[0].0),
            (
                "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
                model[1].0,
            ),
            ("lora_unet_input_blocks_1_0_in_layers_2", model[2].0),
            ("lora_unet_down_blocks_0_resnets_0_conv1", model[2].0),
            ("lora_te_text_model_encoder_layers_3_self_attn_q_proj", model[3].0),
            ("lora_te1_text_model_encoder_layers_3_self_attn_q_proj", model[3].0),
            ("lora_te2_text_model_encoder_layers_0_mlp_fc1", model[4].0),
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", model[0].0),
            ("text_encoder.text_model.encoder.layers.3.self_attn.q_proj", model[3].0),
            ("text_encoder.encoder.layers.3.self_attn.q_proj", model[3].0),
            ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1", model[4].0),
            (
                "base_model.model.unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                model[0].0,
            ),
            (
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora",
                model[0].0,
            ),
            (
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora",
                model[1].0,
            ),
        ];
        for (key, want) in cases {
            let got = t.get(&normalise(key));
            assert_eq!(got.map(String::as_str), Some(want), "{key}");
        }
        assert_eq!(t.get(&normalise("lora_unet_nonexistent_layer")), None);
    }
}
