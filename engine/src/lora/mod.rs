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

/// A1111 `<lora:name:weight>` tags of a prompt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptTags {
    /// The prompt without any tag (what the text encoder sees), whitespace collapsed.
    pub cleaned: String,
    /// (name, weight) of the usable tags (`<lora:name>` means 1.0).
    pub tags: Vec<(String, f32)>,
    /// Tags whose weight is not a finite number (`<lora:x:zzz>`): left off, the caller warns.
    pub invalid: Vec<String>,
}

/// Reads the `<lora:...>` tags of a prompt.
pub fn prompt_tags(prompt: &str) -> PromptTags {
    let mut out = String::with_capacity(prompt.len());
    let mut t = PromptTags::default();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(end) = rest[start..].find('>') else { break };
        out.push_str(&rest[..start]);
        let body = &rest[start + 6..start + end];
        let mut parts = body.split(':');
        let name = parts.next().unwrap_or_default().trim().to_string();
        let weight = match parts.next() {
            None => Some(1.0),
            Some(w) => w.trim().parse::<f32>().ok().filter(|w| w.is_finite()),
        };
        if !name.is_empty() {
            match weight {
                Some(w) => t.tags.push((name, w)),
                None => t.invalid.push(rest[start..start + end + 1].to_string()),
            }
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    t.cleaned = out.split_whitespace().collect::<Vec<_>>().join(" ");
    t
}

/// Removes A1111 `<lora:name:weight>` tags from a prompt; returns the cleaned prompt and the
/// usable (name, weight) pairs (`<lora:name>` means 1.0; a tag whose weight is not a number
/// is dropped: see [`prompt_tags`] for those).
pub fn extract_prompt_tags(prompt: &str) -> (String, Vec<(String, f32)>) {
    let t = prompt_tags(prompt);
    (t.cleaned, t.tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tags_table() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, f32)]);
        let cases: &[Case] = &[
            ("a cat <lora:ink:0.8>, detailed", "a cat , detailed", &[("ink", 0.8)]),
            ("<lora:style> a dog", "a dog", &[("style", 1.0)]),
            ("a <lora:a:0.5> b <lora:b:-1>", "a b", &[("a", 0.5), ("b", -1.0)]),
            ("no tags <lora:broken", "no tags <lora:broken", &[]),
            ("<lora:x:0.7:0.2> y", "y", &[("x", 0.7)]),
            ("a <lora:outline:zzz> b", "a b", &[]),
            ("a <lora:outline:nan> <lora:ok:0.5>", "a", &[("ok", 0.5)]),
        ];
        for (prompt, clean, want) in cases {
            let (c, t) = extract_prompt_tags(prompt);
            assert_eq!(c, *clean, "{prompt}");
            let want: Vec<(String, f32)> = want.iter().map(|(n, w)| (n.to_string(), *w)).collect();
            assert_eq!(t, want, "{prompt}");
        }
        assert_eq!(
            prompt_tags("a <lora:outline:zzz> b").invalid,
            vec!["<lora:outline:zzz>".to_string()]
        );
        assert!(prompt_tags("a <lora:outline:0.8> b").invalid.is_empty());
    }
}
