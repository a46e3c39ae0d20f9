//! Prompt text -> the UNet's conditioning: A1111's prompt syntax (schedule, weights, BREAK),
//! CLIP windows of 77 tokens per encoder, emphasis, A1111's clip skip, SDXL's two encoders
//! and pooled output, diffusers' zeros for SDXL's empty negative prompt.
//!
//! As A1111 does, all texts of one prompt's schedule are encoded as one batch and the
//! "Original" emphasis restores the mean over that batch, window by window; each distinct
//! text is encoded once and counted as often as the schedule lists it.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType as CDType, Tensor};

use super::Pipeline;
use crate::checkpoint::embedding::{self, Embedding};
use crate::error::Result;
use crate::nets::clip::TextRequest;
use crate::nets::config::Family;
use crate::prompt::{parse_attention, prompt_schedule};
use crate::protocol::Emphasis;
use crate::tokenizer::{ClipTokenizer, EmbeddingLookup, EmbeddingMatch, WINDOW, Window};

/// The UNet's conditioning from one denoiser call to a later one.
pub(super) struct CondStep {
    /// Last denoiser call (from 0) this entry serves.
    until: i64,
    /// `[uncond, cond]` contexts `[2, 77k, width]` (or `[cond]` without guidance).
    pub(super) context: Tensor,
    /// SDXL's pooled text embeddings, same rows.
    pub(super) pooled: Option<Tensor>,
}

/// Text conditioning of a job: one entry per change of the prompt's or the negative
/// prompt's schedule (one entry for a prompt without editing or alternation).
pub(super) struct Conditioning {
    steps: Vec<CondStep>,
    /// Textual-inversion embeddings the prompts used: `(name, short hash)`.
    pub(super) embeddings: Vec<(String, String)>,
    /// Distinct texts encoded (prompt and negative prompt, per encoder pass).
    texts_encoded: usize,
}

impl Conditioning {
    /// The entry of denoiser call `n` (from 0): the first that lasts until `n` or later; past
    /// the schedule's end the first one, as A1111's `reconstruct_cond_batch` does.
    pub(super) fn at_call(&self, n: u32) -> &CondStep {
        self.steps.iter().find(|s| s.until >= i64::from(n)).unwrap_or(&self.steps[0])
    }
}

/// A job's conditioning entry by entry, as the sampling loop uses it (for tests and tools).
pub struct ScheduledConditioning {
    /// `(until_call, context [b, 77k, width], pooled)`: denoiser call `n` (from 0) uses the
    /// first entry whose `until_call >= n`.
    pub entries: Vec<(i64, Tensor, Option<Tensor>)>,
    /// Distinct texts the encoders ran (per encoder).
    pub texts_encoded: usize,
    /// Textual-inversion embeddings used: `(name, short hash)`.
    pub embeddings: Vec<(String, String)>,
}

/// One prompt's schedule, encoded by one encoder: per distinct text its hidden states
/// `[k*77, width]` (f32) and pooled output.
struct EncodedPrompt {
    schedule: Vec<(i64, usize)>,
    texts: Vec<(Tensor, Option<Tensor>)>,
    windows: usize,
}

impl EncodedPrompt {
    /// Text index of denoiser call `n` (A1111's rule, see [`Conditioning::at_call`]).
    fn at(&self, n: i64) -> usize {
        self.schedule.iter().find(|(u, _)| *u >= n).unwrap_or(&self.schedule[0]).1
    }
}

/// What the text encoders are asked for one job.
#[derive(Clone, Copy, Debug)]
pub struct TextInput<'a> {
    pub prompt: &'a str,
    pub negative: &'a str,
    /// A1111's "Clip skip" (1 = last layer).
    pub clip_skip: u32,
    /// Also encode the negative prompt (classifier-free guidance).
    pub with_uncond: bool,
    /// Sampling steps the prompt schedule is computed for.
    pub steps: u32,
    pub emphasis: Emphasis,
}

/// Weighted pieces of one scheduled text under `emphasis`.
fn pieces(text: &str, emphasis: Emphasis) -> Vec<(String, f64)> {
    match emphasis {
        Emphasis::None => vec![(text.to_string(), 1.0)],
        Emphasis::Ignore => parse_attention(text)
            .into_iter()
            .map(|p| if crate::prompt::is_break(&p) { p } else { (p.0, 1.0) })
            .collect(),
        _ => parse_attention(text),
    }
}

/// Everything the encoders need for one text request.
struct Encoding<'a> {
    tok: &'a ClipTokenizer,
    steps: u32,
    emphasis: Emphasis,
    embeddings: EmbeddingIndex<'a>,
}

type EmbeddingCache = std::sync::Mutex<HashMap<PathBuf, Embedding>>;

/// The embeddings in the pipeline's folders, by the tokens of their names (longest first),
/// read when a prompt first uses one.
struct EmbeddingIndex<'a> {
    names: Vec<(Vec<u32>, usize)>,
    files: Vec<(String, PathBuf)>,
    cache: &'a EmbeddingCache,
    used: std::cell::RefCell<Vec<usize>>,
}

impl<'a> EmbeddingIndex<'a> {
    fn new(dirs: &[PathBuf], tok: &ClipTokenizer, cache: &'a EmbeddingCache) -> Self {
        let (files, _) = if dirs.is_empty() { (vec![], vec![]) } else { embedding::scan(dirs) };
        let mut names: Vec<(Vec<u32>, usize)> = files
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (tok.encode(n), i))
            .filter(|(ids, _)| !ids.is_empty())
            .collect();
        names.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
        Self {
            names,
            files,
            cache,
            used: Default::default(),
        }
    }

    /// The embedding `id`, read once per pipeline.
    fn get(&self, id: usize) -> Result<Embedding> {
        let path = &self.files[id].1;
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| crate::error::EngineError::Other("embedding cache poisoned".into()))?;
        if let Some(e) = cache.get(path) {
            return Ok(e.clone());
        }
        let e = Embedding::open(path)?;
        cache.insert(path.clone(), e.clone());
        Ok(e)
    }

    /// ComfyUI's `embedding:name` (with or without the file extension) as the bare name A1111
    /// finds; names no file has are left as written.
    fn comfy_names(&self, text: &str) -> String {
        static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let re = RE.get_or_init(|| regex::Regex::new(r"embedding:([^\s,()\[\]:|]+)").expect("regex"));
        re.replace_all(text, |c: &regex::Captures| {
            let name = &c[1];
            let stem = name
                .strip_suffix(".safetensors")
                .or_else(|| name.strip_suffix(".pt"))
                .unwrap_or(name);
            match self.files.iter().find(|(n, _)| n.eq_ignore_ascii_case(stem)) {
                Some((n, _)) => n.clone(),
                None => c[0].to_string(),
            }
        })
        .into_owned()
    }

    fn used(&self) -> Result<Vec<(String, String)>> {
        let mut ids = self.used.borrow().clone();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| self.get(i).map(|e| (e.name, e.hash))).collect()
    }
}

impl EmbeddingLookup for EmbeddingIndex<'_> {
    fn at(&self, tokens: &[u32]) -> Result<Option<EmbeddingMatch>> {
        for (ids, id) in &self.names {
            if tokens.starts_with(ids) {
                let e = self.get(*id)?;
                self.used.borrow_mut().push(*id);
                return Ok(Some(EmbeddingMatch {
                    tokens: ids.len(),
                    id: *id,
                    vectors: e.len(),
                }));
            }
        }
        Ok(None)
    }
}

impl Pipeline {
    /// Text conditioning of the first step as the UNet receives it: `[uncond, cond]`
    /// contexts `[2, 77k, width]` (or `[cond]` alone without guidance) and, for SDXL, the
    /// pooled embeddings.
    pub fn encode_prompt(&self, prompt: &str, negative: &str, clip_skip: u32, with_uncond: bool) -> Result<(Tensor, Option<Tensor>)> {
        let c = self.encode(&TextInput {
            prompt,
            negative,
            clip_skip,
            with_uncond,
            steps: 1,
            emphasis: Emphasis::Original,
        })?;
        let first = &c.steps[0];
        Ok((first.context.clone(), first.pooled.clone()))
    }

    /// [`Pipeline::encode`] in public: every entry of the schedule with its tensors.
    pub fn scheduled_conditioning(&self, input: &TextInput) -> Result<ScheduledConditioning> {
        let c = self.encode(input)?;
        Ok(ScheduledConditioning {
            entries: c.steps.into_iter().map(|s| (s.until, s.context, s.pooled)).collect(),
            texts_encoded: c.texts_encoded / self.text.len().max(1),
            embeddings: c.embeddings,
        })
    }

    /// The job's conditioning over `steps` steps: A1111's schedule of both prompts, each
    /// distinct text encoded once.
    pub(super) fn encode(&self, input: &TextInput) -> Result<Conditioning> {
        let TextInput {
            prompt,
            negative,
            clip_skip,
            with_uncond,
            steps,
            emphasis,
        } = *input;
        let tok = ClipTokenizer::shared()?;
        let enc = Encoding {
            tok,
            steps,
            emphasis,
            embeddings: EmbeddingIndex::new(&self.embedding_dirs, tok, &self.embedding_cache),
        };
        // `<lora:name:w>` tags are resolved by the engine before a job runs; never encode them.
        let (prompt, _) = crate::lora::extract_prompt_tags(prompt);
        let (negative, _) = crate::lora::extract_prompt_tags(negative);
        let (prompt, negative) = (enc.embeddings.comfy_names(&prompt), enc.embeddings.comfy_names(&negative));
        let sdxl = self.config.family == Family::Sdxl;
        let mut per_encoder: Vec<(EncodedPrompt, Option<EncodedPrompt>, Empty)> = vec![];
        let mut texts_encoded = 0;
        for i in 0..self.text.len() {
            let req = if sdxl {
                TextRequest {
                    layer_from_end: 1 + clip_skip as usize,
                    final_norm: false,
                    pooled: i == 1,
                }
            } else {
                TextRequest {
                    layer_from_end: self.config.text_layer_base + clip_skip as usize - 1,
                    final_norm: true,
                    // An SD 1.x-family UNet with `add_embedding` (the embedded model trained
                    // with `--pooled-text`) takes the last encoder's pooled output, as SDXL.
                    pooled: self.config.unet.addition.is_some() && i + 1 == self.text.len(),
                }
            };
            let mut empty = Empty {
                encoder: i,
                req,
                tensor: None,
            };
            let cond = self.encode_schedule(&enc, i, req, &prompt, &mut empty)?;
            texts_encoded += cond.texts.len();
            let uncond = if with_uncond {
                let u = self.encode_schedule(&enc, i, req, &negative, &mut empty)?;
                texts_encoded += u.texts.len();
                Some(u)
            } else {
                None
            };
            per_encoder.push((cond, uncond, empty));
        }
        // One conditioning per change of either schedule.
        let mut bounds: Vec<i64> = vec![];
        for (c, u, _) in &per_encoder[..1] {
            bounds.extend(c.schedule.iter().map(|s| s.0));
            if let Some(u) = u {
                bounds.extend(u.schedule.iter().map(|s| s.0));
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut out = Vec::with_capacity(bounds.len());
        for &b in &bounds {
            let mut contexts = vec![];
            let mut pooled = None;
            for (c, u, empty) in &mut per_encoder {
                let k = c.windows.max(u.as_ref().map_or(0, |u| u.windows));
                let (ch, cp) = &c.texts[c.at(b)];
                let ch = self.pad_windows(ch, k, &enc, empty)?;
                let (rows, pool) = match u {
                    Some(u) => {
                        let (uh, up) = &u.texts[u.at(b)];
                        let uh = self.pad_windows(uh, k, &enc, empty)?;
                        let pool = match (up, cp) {
                            (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 0)?),
                            _ => None,
                        };
                        (Tensor::stack(&[&uh, &ch], 0)?, pool)
                    }
                    None => (ch.unsqueeze(0)?, cp.clone()),
                };
                contexts.push(rows);
                if pool.is_some() {
                    pooled = pool;
                }
            }
            let mut context = if contexts.len() == 1 {
                contexts.remove(0)
            } else {
                Tensor::cat(&contexts, 2)?
            };
            // diffusers' SDXL pipelines use zeros, not the encoded empty string, for an empty
            // negative prompt (`force_zeros_for_empty_prompt`).
            if sdxl && with_uncond && negative.trim().is_empty() {
                let cond_ctx = context.narrow(0, 1, 1)?;
                context = Tensor::cat(&[&cond_ctx.zeros_like()?, &cond_ctx], 0)?;
                if let Some(p) = pooled.take() {
                    let c = p.narrow(0, 1, 1)?;
                    pooled = Some(Tensor::cat(&[&c.zeros_like()?, &c], 0)?);
                }
            }
            out.push(CondStep { until: b, context, pooled });
        }
        Ok(Conditioning {
            steps: out,
            texts_encoded,
            embeddings: enc.embeddings.used()?,
        })
    }

    /// The empty prompt's window through its encoder, `[77, width]`, encoded the first time
    /// it is needed (padding a shorter prompt, ComfyUI's emphasis reference).
    fn empty_window(&self, enc: &Encoding, empty: &mut Empty) -> Result<Tensor> {
        if let Some(t) = &empty.tensor {
            return Ok(t.clone());
        }
        let e = &self.text[empty.encoder];
        let row = enc.tok.windows("", e.config.pad_token);
        let (hidden, _) = e.forward(
            &row,
            TextRequest {
                pooled: false,
                ..empty.req
            },
        )?;
        let t = hidden.get(0)?.to_dtype(CDType::F32)?;
        empty.tensor = Some(t.clone());
        Ok(t)
    }

    /// `[k*77, d]` hidden states padded with empty windows to `k` windows.
    fn pad_windows(&self, h: &Tensor, k: usize, enc: &Encoding, empty: &mut Empty) -> Result<Tensor> {
        let have = h.dim(0)? / WINDOW;
        if have >= k {
            return Ok(h.clone());
        }
        let e = self.empty_window(enc, empty)?;
        let mut parts = vec![h.clone()];
        parts.extend(std::iter::repeat_n(e, k - have));
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// One prompt's schedule through encoder `i`, A1111's batch semantics.
    fn encode_schedule(&self, enc: &Encoding, i: usize, req: TextRequest, prompt: &str, empty: &mut Empty) -> Result<EncodedPrompt> {
        let e = &self.text[i];
        let pad = e.config.pad_token;
        let entries = prompt_schedule(prompt, enc.steps);
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut distinct: Vec<(&str, usize)> = vec![];
        let mut schedule = vec![];
        for (until, text) in &entries {
            let j = *index.entry(text.as_str()).or_insert_with(|| {
                distinct.push((text.as_str(), 0));
                distinct.len() - 1
            });
            distinct[j].1 += 1;
            schedule.push((*until, j));
        }
        let windows: Vec<Vec<Window>> = distinct
            .iter()
            .map(|(t, _)| enc.tok.weighted_windows_with(&pieces(t, enc.emphasis), pad, &enc.embeddings))
            .collect::<Result<_>>()?;
        let k = windows.iter().map(Vec::len).max().unwrap_or(1);
        let empty_window = enc.tok.weighted_windows(&[(String::new(), 1.0)], pad).remove(0);
        let mut rows: Vec<Vec<u32>> = vec![];
        let mut weights: Vec<f32> = vec![];
        let mut fixes: Vec<(usize, usize, Tensor)> = vec![];
        for w in &windows {
            for j in 0..k {
                let win = w.get(j).unwrap_or(&empty_window);
                for &(pos, id) in &win.fixes {
                    let emb = enc.embeddings.get(id)?;
                    let v = emb.for_encoder(i, self.text.len(), e.config.hidden)?.clone();
                    fixes.push((rows.len(), pos, v));
                }
                rows.push(win.tokens.clone());
                weights.extend_from_slice(&win.weights);
            }
        }
        let (hidden, pool) = e.forward_with(&rows, &fixes, req)?;
        let hidden = hidden.to_dtype(CDType::F32)?;
        let weighted = weights.iter().any(|w| *w != 1.0);
        let hidden = if weighted {
            let counts: Vec<usize> = distinct.iter().map(|d| d.1).collect();
            let reference = if enc.emphasis == Emphasis::Comfy {
                Some(self.empty_window(enc, empty)?)
            } else {
                None
            };
            apply_emphasis(&hidden, &weights, &counts, k, reference.as_ref(), enc.emphasis)?
        } else {
            hidden
        };
        let d = hidden.dim(2)?;
        let mut texts = vec![];
        for u in 0..distinct.len() {
            let h = hidden.narrow(0, u * k, k)?.reshape((k * WINDOW, d))?;
            // The pooled output of each text's first window.
            let p = pool.as_ref().map(|p| p.narrow(0, u * k, 1)?.to_dtype(CDType::F32)).transpose()?;
            texts.push((h, p));
        }
        Ok(EncodedPrompt {
            schedule,
            texts,
            windows: k,
        })
    }
}

/// An encoder's empty-prompt window, encoded on first use.
struct Empty {
    encoder: usize,
    req: TextRequest,
    tensor: Option<Tensor>,
}

/// Token weights on the hidden states `[U*k, 77, d]` (U distinct texts of `k` windows,
/// text `u` counted `counts[u]` times in the schedule).
fn apply_emphasis(
    hidden: &Tensor,
    weights: &[f32],
    counts: &[usize],
    k: usize,
    empty: Option<&Tensor>,
    emphasis: Emphasis,
) -> Result<Tensor> {
    let (rows, n, d) = hidden.dims3()?;
    let w = Tensor::from_slice(weights, (rows, n, 1), hidden.device())?;
    match emphasis {
        Emphasis::NoNorm => Ok(hidden.broadcast_mul(&w)?),
        Emphasis::Comfy => {
            let Some(empty) = empty else {
                return Ok(hidden.clone());
            };
            // Only positions whose weight is not 1 move (ComfyUI's `weight != 1.0`).
            let e = empty.unsqueeze(0)?.broadcast_as((rows, n, d))?;
            let moved = ((hidden - &e)?.broadcast_mul(&w)? + &e)?;
            let mask: Vec<u8> = weights.iter().map(|x| u8::from(*x != 1.0)).collect();
            let mask = Tensor::from_vec(mask, (rows, n, 1), hidden.device())?.broadcast_as((rows, n, d))?;
            Ok(mask.where_cond(&moved, hidden)?)
        }
        Emphasis::Original => {
            // A1111: z * w, then z * (mean(z) / mean(z * w)), the means over the batch of the
            // schedule's texts for each window.
            let scaled = hidden.broadcast_mul(&w)?;
            let sums = |t: &Tensor| -> Result<Vec<f64>> {
                let s: Vec<f32> = t.sum((1, 2))?.to_vec1()?;
                Ok(s.into_iter().map(f64::from).collect())
            };
            let (before, after) = (sums(hidden)?, sums(&scaled)?);
            let mut factors = vec![1f32; rows];
            for j in 0..k {
                let (mut b, mut a) = (0f64, 0f64);
                for (u, c) in counts.iter().enumerate() {
                    b += before[u * k + j] * *c as f64;
                    a += after[u * k + j] * *c as f64;
                }
                let f = if a == 0.0 { 1.0 } else { b / a };
                for u in 0..counts.len() {
                    factors[u * k + j] = f as f32;
                }
            }
            let f = Tensor::from_vec(factors, (rows, 1, 1), hidden.device())?;
            Ok(scaled.broadcast_mul(&f)?)
        }
        Emphasis::Ignore | Emphasis::None => Ok(hidden.clone()),
    }
}
