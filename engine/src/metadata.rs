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
        // A1111 writes `Emphasis` only when it is not the default "Original".
        if let Some(v) = num("Denoising strength").filter(|v| (0.0..=1.0).contains(v)) {
            r.strength = v;
        }
        r.mask_blur = num("Mask blur").filter(|v| (0.0..=64.0).contains(v)).map_or(4, |v| v as u32);
        // A1111 writes these two only for "Only masked"; its default padding is 32.
        r.inpaint_area = self
            .get("Inpaint area")
            .and_then(crate::protocol::InpaintArea::parse)
            .unwrap_or_default();
        r.masked_padding = num("Masked area padding")
            .filter(|v| (0.0..=4096.0).contains(v))
            .map_or(32, |v| v as u32);
        r.masked_content = self
            .get("Masked content")
            .and_then(crate::protocol::MaskedContent::parse)
            .unwrap_or_default();
        // A1111's hires fix keys (its denoising strength is the second pass's).
        r.hires = num("Hires upscale")
            .filter(|v| *v > 1.0 && *v <= 4.0)
            .map(|scale| crate::protocol::Hires {
                scale,
                steps: num("Hires steps").filter(|v| (0.0..=1000.0).contains(v)).map_or(0, |v| v as u32),
                strength: num("Denoising strength").filter(|v| (0.0..=1.0).contains(v)).unwrap_or(0.7),
                upscaler: match self.get("Hires upscaler").map(str::trim) {
                    Some(n) if !n.is_empty() && !n.eq_ignore_ascii_case("none") => {
                        crate::protocol::HiresUpscaler::parse(n).unwrap_or(crate::protocol::HiresUpscaler::Model)
                    }
                    _ => crate::protocol::HiresUpscaler::Latent,
                },
                // A model is known by its name (A1111: the file's stem); the caller finds
                // the file in its upscaler folders.
                model: self
                    .get("Hires upscaler")
                    .map(str::trim)
                    .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("none") && crate::protocol::HiresUpscaler::parse(n).is_none())
                    .map(std::path::PathBuf::from),
            });
        r.emphasis = self.get("Emphasis").and_then(crate::protocol::Emphasis::parse).unwrap_or_default();
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

    /// (solver name, schedule name) of A1111's sampler and scheduler names ("DPM++ 2M" and
    /// "Karras", or the older "DPM++ 2M Karras"), as A1111's API takes them.
    pub fn a1111_sampler(sampler: &str, scheduler: Option<&str>) -> (Option<&'static str>, Option<String>) {
        let mut p = Parameters {
            prompt: String::new(),
            negative: String::new(),
            pairs: vec![("Sampler".into(), sampler.into())],
        };
        if let Some(s) = scheduler {
            p.push("Schedule type", s);
        }
        p.sampler()
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

/// One LoRA an image was made with, from `Lora hashes` (A1111) and `Lora weights` (ours).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraUse {
    pub name: String,
    pub hash: Option<String>,
    /// `None` when only A1111's hash list names it (its strength is in the prompt's tag).
    pub weight: Option<f32>,
}

/// `0.8`, `1`, `0.65`: a strength with at most 2 decimals, trailing zeros dropped.
pub fn short_number(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" || s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// `"a: x, b: y"` -> [(a, x), (b, y)].
fn name_list(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|item| {
            let (n, x) = item.rsplit_once(':')?;
            let n = n.trim();
            (!n.is_empty()).then(|| (n.to_string(), x.trim().to_string()))
        })
        .collect()
}

impl Parameters {
    /// A text whose last line is not a parameter line, read as a prompt (and negative prompt)
    /// only: what a restore can still take from it.
    pub fn prompt_only(text: &str) -> Self {
        let text = text.trim_end();
        let (prompt, negative) = match text.find("\nNegative prompt:") {
            Some(i) => (&text[..i], text[i + "\nNegative prompt:".len()..].trim_start()),
            None => match text.strip_prefix("Negative prompt:") {
                Some(n) => ("", n.trim_start()),
                None => (text, ""),
            },
        };
        Self {
            prompt: prompt.to_string(),
            negative: negative.to_string(),
            pairs: vec![],
        }
    }

    /// The LoRAs the image was made with, in the order `Lora hashes` lists them.
    pub fn loras(&self) -> Vec<LoraUse> {
        let hashes = self.get("Lora hashes").map(name_list).unwrap_or_default();
        let weights = self.get("Lora weights").map(name_list).unwrap_or_default();
        let mut out: Vec<LoraUse> = hashes
            .into_iter()
            .map(|(name, h)| LoraUse {
                name,
                hash: Some(h).filter(|h| !h.is_empty()),
                weight: None,
            })
            .collect();
        for (name, w) in weights {
            let Some(w) = w.parse::<f32>().ok().filter(|w| w.is_finite()) else {
                continue;
            };
            match out.iter_mut().find(|l| l.name == name) {
                Some(l) => l.weight = Some(w),
                None => out.push(LoraUse {
                    name,
                    hash: None,
                    weight: Some(w),
                }),
            }
        }
        out
    }

    /// Settings the text carries that a restore cannot use (a value that does not parse, a
    /// sampler this studio does not have), as `Key (value)`, for the message that says what
    /// was skipped.
    pub fn unusable(&self) -> Vec<String> {
        let mut out = vec![];
        let bad = |k: &str, ok: &dyn Fn(&str) -> bool, out: &mut Vec<String>| {
            if let Some(v) = self.get(k)
                && !ok(v.trim())
            {
                out.push(format!("{k} ({v})"));
            }
        };
        let positive = |v: &str| v.parse::<f64>().is_ok_and(|x| x.is_finite() && x >= 1.0);
        let finite = |v: &str| v.parse::<f64>().is_ok_and(f64::is_finite);
        bad("Steps", &positive, &mut out);
        bad("CFG scale", &finite, &mut out);
        bad("Seed", &|v: &str| v.parse::<i128>().is_ok(), &mut out);
        bad(
            "Size",
            &|v: &str| {
                v.split_once('x')
                    .is_some_and(|(w, h)| w.trim().parse::<u32>().is_ok() && h.trim().parse::<u32>().is_ok())
            },
            &mut out,
        );
        bad("Clip skip", &positive, &mut out);
        if self.sampler().0.is_none()
            && let Some(v) = self.get("Sampler").or(self.get("Solver"))
        {
            out.push(format!("Sampler ({v})"));
        }
        out
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
    fn loras_prompt_only_and_unusable_values() {
        let p = Parameters::parse("a <lora:ink:0.5>\nSteps: x, Sampler: Magic, CFG scale: 7, Seed: 1, Lora hashes: \"outline: 3c6c5e9d5b, ink: 11\", Lora weights: \"outline: 0.8\"")
            .expect("parses");
        assert_eq!(
            p.loras(),
            vec![
                LoraUse {
                    name: "outline".into(),
                    hash: Some("3c6c5e9d5b".into()),
                    weight: Some(0.8)
                },
                LoraUse {
                    name: "ink".into(),
                    hash: Some("11".into()),
                    weight: None
                },
            ]
        );
        assert_eq!(p.unusable(), vec!["Steps (x)".to_string(), "Sampler (Magic)".to_string()]);
        let q = Parameters::prompt_only("a cat\nin a hat\nNegative prompt: dog\ngarbage line");
        assert_eq!((q.prompt.as_str(), q.negative.as_str()), ("a cat\nin a hat", "dog\ngarbage line"));
        assert_eq!(short_number(0.8f32 as f64), "0.8");
        assert_eq!(short_number(1.0), "1");
    }

    #[test]
    fn too_few_pairs_is_not_metadata() {
        assert_eq!(Parameters::parse("just a caption: with colon"), None);
    }
}
