//! LoRA: detect the format, convert keys to the model's own names, merge.
//!
//! `W = W0 + sum_i strength_i * scale_i * delta_i` is always computed from the kept original
//! `W0` of the touched tensors, in f32, then stored in the model dtype: changing a strength or
//! removing a LoRA never re-reads the checkpoint and never accumulates rounding.

pub mod file;
pub mod keys;
pub mod merge;

pub use crate::protocol::LoraReport;
pub use file::{LoraFile, LoraFormat};
pub use merge::merge_into;

/// Removes A1111 `<lora:name:weight>` tags from a prompt; returns the cleaned prompt and the
/// (name, weight) pairs (`<lora:name>` means 1.0).
pub fn extract_prompt_tags(prompt: &str) -> (String, Vec<(String, f32)>) {
    let mut out = String::with_capacity(prompt.len());
    let mut tags = vec![];
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(end) = rest[start..].find('>') else { break };
        out.push_str(&rest[..start]);
        let body = &rest[start + 6..start + end];
        let mut parts = body.split(':');
        let name = parts.next().unwrap_or_default().trim().to_string();
        let weight = parts.next().and_then(|w| w.trim().parse::<f32>().ok()).unwrap_or(1.0);
        if !name.is_empty() {
            tags.push((name, weight));
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    let cleaned = out.split_whitespace().collect::<Vec<_>>().join(" ");
    (cleaned, tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tags() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, f32)]);
        let cases: &[Case] = &[
            ("a cat <lora:ink:0.8>, detailed", "a cat , detailed", &[("ink", 0.8)]),
            ("<lora:style> a dog", "a dog", &[("style", 1.0)]),
            ("a <lora:a:0.5> b <lora:b:-1>", "a b", &[("a", 0.5), ("b", -1.0)]),
            ("no tags <lora:broken", "no tags <lora:broken", &[]),
            ("<lora:x:0.7:0.2> y", "y", &[("x", 0.7)]),
        ];
        for (prompt, clean, want) in cases {
            let (c, t) = extract_prompt_tags(prompt);
            assert_eq!(c, *clean, "{prompt}");
            let want: Vec<(String, f32)> = want.iter().map(|(n, w)| (n.to_string(), *w)).collect();
            assert_eq!(t, want, "{prompt}");
        }
    }
}
