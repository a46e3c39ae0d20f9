//! A1111-compatible `parameters` text: written into every PNG, parsed back to restore settings.
//!
//! Format (read by A1111, Forge, Civitai and many viewers): the prompt, an optional
//! `Negative prompt:` line, then one line of `Key: value` pairs; values containing `,`, `:`
//! or a newline are JSON-quoted.

use std::collections::BTreeMap;

use crate::protocol::GenerateRequest;

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

impl Parameters {
    /// The request these parameters describe, starting from `base` for anything they do not
    /// say (or say in a way we cannot use). Reads our own `Solver`/`Schedule` keys first, then
    /// A1111's `Sampler` (including the old "DPM++ 2M Karras" spelling) and `Schedule type`.
    pub fn to_request(&self, base: &GenerateRequest) -> GenerateRequest {
        let mut r = base.clone();
        r.prompt = self.prompt.clone();
        r.negative = self.negative.clone();
        let num = |k: &str| self.get(k).and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite());
        if let Some(v) = num("Steps").filter(|v| *v >= 1.0) {
            r.steps = v as u32;
        }
        if let Some(v) = num("CFG scale") {
            r.cfg_scale = v;
        }
        if let Some(v) = self.get("Seed").and_then(|v| v.trim().parse::<i128>().ok()) {
            // A1111 seeds are signed; -1 means "random" and is kept as base's seed.
            if v >= 0 {
                r.seed = v as u64;
            }
        }
        if let Some((w, h)) = self.get("Size").and_then(|v| v.split_once('x'))
            && let (Ok(w), Ok(h)) = (w.trim().parse(), h.trim().parse())
        {
            r.width = w;
            r.height = h;
        }
        if let Some(v) = num("Clip skip").filter(|v| *v >= 1.0) {
            r.clip_skip = v as u32;
        }
        r.cfg_rescale = num("CFG rescale").unwrap_or(0.0);
        r.cfg_until = num("CFG until").unwrap_or(1.0);
        r.feature_cache = num("Feature cache").filter(|v| *v >= 1.0).map_or(1, |v| v as u32);
        r.token_merge = num("Token merging ratio").filter(|v| v.is_finite() && *v >= 0.0).unwrap_or(0.0);
        r.eta = num("Eta");
        let (solver, schedule) = self.sampler();
        if let Some(s) = solver {
            r.solver = s.to_string();
        }
        if let Some(s) = schedule {
            r.schedule = s;
        }
        r
    }

    /// (solver name, schedule name) from our keys or A1111's.
    fn sampler(&self) -> (Option<&'static str>, Option<String>) {
        use crate::sampling::SOLVERS;
        use crate::sampling::schedule::{SCHEDULES, ScheduleKind};
        let by_name = |n: &str| SOLVERS.iter().find(|s| s.name.eq_ignore_ascii_case(n.trim())).map(|s| s.name);
        let by_a1111 = |n: &str| SOLVERS.iter().find(|s| s.a1111.eq_ignore_ascii_case(n.trim())).map(|s| s.name);
        let mut solver = self.get("Solver").and_then(by_name);
        let mut schedule = self
            .get("Schedule")
            .filter(|s| ScheduleKind::parse(s).is_some())
            .map(|s| s.trim().to_ascii_lowercase());
        if solver.is_none()
            && let Some(a) = self.get("Sampler")
        {
            solver = by_a1111(a);
            // Before A1111 1.9 the schedule was part of the sampler's name.
            for (suffix, sched) in [(" Karras", "karras"), (" Exponential", "exponential")] {
                if solver.is_none()
                    && let Some(stem) = a.trim().strip_suffix(suffix)
                {
                    solver = by_a1111(stem);
                    if solver.is_some() && schedule.is_none() {
                        schedule = Some(sched.to_string());
                    }
                }
            }
        }
        if schedule.is_none()
            && let Some(t) = self.get("Schedule type")
        {
            let leading = ScheduleKind::Discrete(crate::sampling::schedule::Spacing::Leading);
            schedule = SCHEDULES
                .iter()
                .map(|(n, _)| *n)
                .find(|n| ScheduleKind::parse(n).is_some_and(|k| k != leading && k.a1111().eq_ignore_ascii_case(t.trim())))
                .map(str::to_string);
        }
        (solver, schedule)
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
    fn restores_requests_from_ours_and_a1111() {
        let base = GenerateRequest::default();
        let check = |text: &str, solver: &str, schedule: &str, steps: u32, seed: u64, size: (u32, u32)| {
            let r = Parameters::parse(text).expect("parses").to_request(&base);
            assert_eq!((r.solver.as_str(), r.schedule.as_str()), (solver, schedule), "{text}");
            assert_eq!((r.steps, r.seed, r.width, r.height), (steps, seed, size.0, size.1), "{text}");
        };
        check(
            "a\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 9, Size: 512x768",
            "dpm++2m",
            "karras",
            20,
            9,
            (512, 768),
        );
        check(
            "a\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 640x512",
            "dpm++2m",
            "karras",
            30,
            5,
            (640, 512),
        );
        check(
            "a\nSteps: 8, Sampler: Euler a, CFG scale: 7, Seed: -1, Size: 64x64",
            "euler-a",
            "default",
            8,
            0,
            (64, 64),
        );
        check(
            "a\nSteps: 4, Sampler: UniPC, Schedule type: Automatic, CFG scale: 2, Seed: 1, Size: 64x64, Solver: unipc-bh1, Schedule: trailing",
            "unipc-bh1",
            "trailing",
            4,
            1,
            (64, 64),
        );
        check(
            "a\nSteps: 4, Sampler: Nonexistent, CFG scale: x, Seed: 1, Size: 64x64",
            "euler",
            "default",
            4,
            1,
            (64, 64),
        );
        let r = Parameters::parse("cat\nNegative prompt: dog\nSteps: 3, CFG scale: 4.5, Seed: 1, Clip skip: 2, CFG rescale: 0.7")
            .expect("parses")
            .to_request(&base);
        assert_eq!(
            (r.prompt.as_str(), r.negative.as_str(), r.cfg_scale, r.clip_skip, r.cfg_rescale),
            ("cat", "dog", 4.5, 2, 0.7)
        );
    }

    #[test]
    fn too_few_pairs_is_not_metadata() {
        assert_eq!(Parameters::parse("just a caption: with colon"), None);
    }
}
