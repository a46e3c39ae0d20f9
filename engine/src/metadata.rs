//! A1111-compatible `parameters` text: written into every PNG, parsed back to restore settings.
//!
//! Format (read by A1111, Forge, Civitai and many viewers): the prompt, an optional
//! `Negative prompt:` line, then one line of `Key: value` pairs; values containing `,`, `:`
//! or a newline are JSON-quoted.

use std::collections::BTreeMap;

/// The settings one image was made with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parameters {
    pub prompt: String,
    pub negative: String,
    /// Key/value pairs in the order they are written.
    pub pairs: Vec<(String, String)>,
}

fn quote(v: &str) -> String {
    if v.contains(',') || v.contains(':') || v.contains('\n') || v.contains('"') {
        serde_json::to_string(v).unwrap_or_else(|_| v.replace(['"', ',', ':', '\n'], " "))
    } else {
        v.to_string()
    }
}

impl Parameters {
    /// Appends a pair (quoted on output where needed).
    pub fn push(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.pairs.push((key.to_string(), value.to_string()));
        self
    }

    /// Value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The text chunk.
    pub fn to_text(&self) -> String {
        let mut out = self.prompt.clone();
        if !self.negative.is_empty() {
            out.push_str("\nNegative prompt: ");
            out.push_str(&self.negative);
        }
        let line: Vec<String> = self.pairs.iter().map(|(k, v)| format!("{k}: {}", quote(v))).collect();
        out.push('\n');
        out.push_str(&line.join(", "));
        out
    }

    /// Parses text written by A1111 or by us; `None` when the last line is not a parameter
    /// line (fewer than 3 pairs), as A1111's own reader decides.
    pub fn parse(text: &str) -> Option<Self> {
        let re = pair_regex();
        let lines: Vec<&str> = text.trim_end().split('\n').collect();
        let last = *lines.last()?;
        let pairs: Vec<(String, String)> = re
            .captures_iter(last)
            .filter_map(|c| {
                let k = c.get(1)?.as_str().trim().to_string();
                let raw = c.get(2)?.as_str().trim();
                let v = if raw.starts_with('"') {
                    serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string())
                } else {
                    raw.to_string()
                };
                Some((k, v))
            })
            .collect();
        if pairs.len() < 3 {
            return None;
        }
        let mut prompt_lines = vec![];
        let mut negative_lines: Vec<&str> = vec![];
        let mut in_negative = false;
        for l in &lines[..lines.len() - 1] {
            if let Some(n) = l.strip_prefix("Negative prompt:") {
                in_negative = true;
                negative_lines.push(n.trim_start());
            } else if in_negative {
                negative_lines.push(l);
            } else {
                prompt_lines.push(*l);
            }
        }
        Some(Self {
            prompt: prompt_lines.join("\n"),
            negative: negative_lines.join("\n"),
            pairs,
        })
    }

    /// Pairs as a map (last value wins).
    pub fn map(&self) -> BTreeMap<String, String> {
        self.pairs.iter().cloned().collect()
    }
}

/// The regular expression A1111 uses to split the parameter line into pairs.
pub fn pair_regex() -> regex::Regex {
    #[allow(clippy::unwrap_used)] // a constant pattern, covered by tests
    regex::Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_quoting() {
        let mut p = Parameters {
            prompt: "a cat,\nin a hat".into(),
            negative: "blurry".into(),
            pairs: vec![],
        };
        p.push("Steps", 20)
            .push("Sampler", "DPM++ 2M")
            .push("CFG scale", 7)
            .push("Seed", 42)
            .push("Model", "my: model, v2");
        let text = p.to_text();
        assert!(text.contains("Model: \"my: model, v2\""), "{text}");
        let q = Parameters::parse(&text).expect("parses");
        assert_eq!(q, p);
    }

    #[test]
    fn reads_a1111_text() {
        let text = "masterpiece\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b, Model: name";
        let p = Parameters::parse(text).expect("parses");
        assert_eq!(p.prompt, "masterpiece");
        assert_eq!(p.negative, "ugly");
        assert_eq!(p.get("Seed"), Some("965400086"));
        assert_eq!(p.get("Schedule type"), Some("Karras"));
        assert_eq!(p.pairs.len(), 8);
    }

    #[test]
    fn too_few_pairs_is_not_metadata() {
        assert_eq!(Parameters::parse("just a caption: with colon"), None);
    }
}
