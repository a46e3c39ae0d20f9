//! CLIP's byte-level BPE tokenizer with the OpenAI vocabulary, and A1111-style prompt chunking.
//!
//! The vocabulary (`assets/clip/bpe_simple_vocab_16e6.txt.gz`, MIT, OpenAI) is compiled into
//! the binary so the studio works offline. Ids follow OpenAI/transformers: 256 byte symbols,
//! the same with `</w>`, one id per merge, then `<|startoftext|>` (49406) and
//! `<|endoftext|>` (49407).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};

use crate::error::{EngineError, Result};

static VOCAB_GZ: &[u8] = include_bytes!("../../assets/clip/bpe_simple_vocab_16e6.txt.gz");

/// Start-of-text id.
pub const BOS: u32 = 49406;
/// End-of-text id.
pub const EOS: u32 = 49407;
/// Token positions of one CLIP window.
pub const WINDOW: usize = 77;
/// Prompt tokens per window (the rest are BOS and EOS).
pub const CHUNK: usize = WINDOW - 2;
/// A1111's "comma padding backtrack": a chunk that fills up is cut after a comma found within
/// this many tokens of its end, so phrases are not split across windows.
const COMMA_BACKTRACK: usize = 20;

/// The tokenizer; build once with [`ClipTokenizer::shared`].
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_to_char: [char; 256],
    pattern: regex::Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
    comma: u32,
}

/// GPT-2's reversible byte -> printable-character table, and the bytes in vocabulary order
/// (printable ones first, as `bytes_to_unicode().values()` lists them).
fn bytes_to_unicode() -> ([char; 256], Vec<u8>) {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = ['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    (table, printable.iter().map(|&b| b as u8).collect())
}

impl ClipTokenizer {
    /// The process-wide tokenizer (the vocabulary is parsed once).
    pub fn shared() -> Result<&'static ClipTokenizer> {
        static TOK: OnceLock<std::result::Result<ClipTokenizer, String>> = OnceLock::new();
        TOK.get_or_init(|| ClipTokenizer::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| EngineError::Other(e.clone()))
    }

    fn new() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| EngineError::Other(format!("embedded CLIP vocabulary is damaged: {e}")))?;
        let merges: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .take(49152 - 256 - 2)
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let (byte_to_char, order) = bytes_to_unicode();
        let mut vocab: Vec<String> = order.iter().map(|&b| byte_to_char[b as usize].to_string()).collect();
        vocab.extend(order.iter().map(|&b| format!("{}</w>", byte_to_char[b as usize])));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let encoder: HashMap<String, u32> = vocab.into_iter().enumerate().map(|(i, s)| (s, i as u32)).collect();
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        let pattern = regex::Regex::new(r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
            .map_err(|e| EngineError::Other(e.to_string()))?;
        let comma = *encoder
            .get(",</w>")
            .ok_or_else(|| EngineError::Other("vocabulary lacks ','".into()))?;
        Ok(Self {
            encoder,
            ranks,
            byte_to_char,
            pattern,
            cache: Mutex::new(HashMap::new()),
            comma,
        })
    }

    fn bpe(&self, word: &str) -> Vec<u32> {
        if let Ok(c) = self.cache.lock()
            && let Some(ids) = c.get(word)
        {
            return ids.clone();
        }
        let chars: Vec<String> = word.bytes().map(|b| self.byte_to_char[b as usize].to_string()).collect();
        let mut parts = chars;
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, p)| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|r| (*r, i)))
                .min();
            let Some((_, at)) = best else { break };
            let (a, b) = (parts[at].clone(), parts[at + 1].clone());
            let mut merged = Vec::with_capacity(parts.len());
            let mut i = 0;
            while i < parts.len() {
                if i + 1 < parts.len() && parts[i] == a && parts[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(parts[i].clone());
                    i += 1;
                }
            }
            parts = merged;
        }
        let ids: Vec<u32> = parts.iter().filter_map(|p| self.encoder.get(p).copied()).collect();
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 100_000 {
                c.clear();
            }
            c.insert(word.to_string(), ids.clone());
        }
        ids
    }

    /// Token ids of `text` without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        let mut out = vec![];
        for m in self.pattern.find_iter(&cleaned) {
            match m.as_str() {
                "<|startoftext|>" => out.push(BOS),
                "<|endoftext|>" => out.push(EOS),
                w => out.extend(self.bpe(w)),
            }
        }
        out
    }

    /// Splits a prompt into 77-token windows the way A1111 does: 75 prompt tokens each,
    /// cut after a nearby comma when a window fills up, wrapped in BOS/EOS and padded with
    /// `pad`. An empty prompt gives one window.
    pub fn windows(&self, text: &str, pad: u32) -> Vec<Vec<u32>> {
        self.weighted_windows(&[(text.to_string(), 1.0)], pad)
            .into_iter()
            .map(|w| w.tokens)
            .collect()
    }

    /// A1111's `tokenize_line` over weighted pieces (`prompt::parse_attention`): each piece
    /// tokenized on its own, its weight on each of its tokens; the `BREAK` marker closes the
    /// window; a full window moves the tokens after its last comma (within 20) to the next.
    /// BOS, EOS and padding have weight 1. An empty prompt gives one window.
    pub fn weighted_windows(&self, pieces: &[(String, f64)], pad: u32) -> Vec<Window> {
        self.weighted_windows_with(pieces, pad, &NoEmbeddings).unwrap_or_default()
    }

    /// [`Self::weighted_windows`] with textual-inversion embeddings: where `lookup` finds
    /// one at a token, its vectors take as many positions (with the piece's weight) in
    /// place of the name's tokens, moved whole to the next window where they do not fit,
    /// as A1111's `tokenize_line` does.
    pub fn weighted_windows_with(&self, pieces: &[(String, f64)], pad: u32, lookup: &dyn EmbeddingLookup) -> Result<Vec<Window>> {
        let mut windows = vec![];
        let mut tokens: Vec<u32> = vec![];
        let mut weights: Vec<f32> = vec![];
        let mut last_comma: Option<usize> = None;
        let mut fixes: Vec<(usize, usize)> = vec![];
        let close = |tokens: &mut Vec<u32>, weights: &mut Vec<f32>, fixes: &mut Vec<(usize, usize)>, windows: &mut Vec<Window>| {
            let mut t = Vec::with_capacity(WINDOW);
            t.push(BOS);
            t.append(tokens);
            t.push(EOS);
            t.resize(WINDOW, pad);
            let mut w = Vec::with_capacity(WINDOW);
            w.push(1.0);
            w.append(weights);
            w.resize(WINDOW, 1.0);
            // Positions inside the window: after BOS.
            let fixes = std::mem::take(fixes).into_iter().map(|(p, e)| (p + 1, e)).collect();
            windows.push(Window {
                tokens: t,
                weights: w,
                fixes,
            });
        };
        for piece in pieces {
            if crate::prompt::is_break(piece) {
                close(&mut tokens, &mut weights, &mut fixes, &mut windows);
                last_comma = None;
                continue;
            }
            let weight = piece.1 as f32;
            let ids = self.encode(&piece.0);
            let mut i = 0;
            while i < ids.len() {
                let t = ids[i];
                if t == self.comma {
                    last_comma = Some(tokens.len());
                } else if tokens.len() == CHUNK
                    && let Some(c) = last_comma
                    && tokens.len() - c <= COMMA_BACKTRACK
                {
                    let mut rest = tokens.split_off(c + 1);
                    let mut rest_w = weights.split_off(c + 1);
                    // Embeddings after the cut move with their positions.
                    let moved: Vec<(usize, usize)> = fixes.iter().filter(|f| f.0 > c).map(|&(p, e)| (p - c - 1, e)).collect();
                    fixes.retain(|f| f.0 <= c);
                    close(&mut tokens, &mut weights, &mut fixes, &mut windows);
                    tokens.append(&mut rest);
                    weights.append(&mut rest_w);
                    fixes = moved;
                    last_comma = None;
                }
                if tokens.len() == CHUNK {
                    close(&mut tokens, &mut weights, &mut fixes, &mut windows);
                    last_comma = None;
                }
                if let Some(m) = lookup.at(&ids[i..])? {
                    if tokens.len() + m.vectors > CHUNK {
                        close(&mut tokens, &mut weights, &mut fixes, &mut windows);
                        last_comma = None;
                    }
                    fixes.push((tokens.len(), m.id));
                    tokens.extend(std::iter::repeat_n(0, m.vectors));
                    weights.extend(std::iter::repeat_n(weight, m.vectors));
                    i += m.tokens.max(1);
                    continue;
                }
                tokens.push(t);
                weights.push(weight);
                i += 1;
            }
        }
        if !tokens.is_empty() || windows.is_empty() {
            close(&mut tokens, &mut weights, &mut fixes, &mut windows);
        }
        Ok(windows)
    }

    /// Prompt tokens (BOS/EOS/padding left out) in each window of `pieces`, for a counter
    /// like A1111's `42/75`.
    pub fn window_counts(&self, pieces: &[(String, f64)]) -> Vec<usize> {
        self.weighted_windows(pieces, EOS)
            .iter()
            .map(|w| w.tokens[1..].iter().position(|&t| t == EOS).unwrap_or(CHUNK))
            .collect()
    }
}

/// One 77-token CLIP window and the attention weight of each position.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
    /// `(position, embedding id)`: an embedding's vectors start at that position (their
    /// token ids there are placeholders).
    pub fixes: Vec<(usize, usize)>,
}

/// An embedding found at a token: how many prompt tokens its name takes, which one it is,
/// how many positions its vectors take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingMatch {
    pub tokens: usize,
    pub id: usize,
    pub vectors: usize,
}

/// Finds the textual-inversion embedding whose name's tokens start `tokens`, if any.
pub trait EmbeddingLookup {
    fn at(&self, tokens: &[u32]) -> Result<Option<EmbeddingMatch>>;
}

/// No embeddings.
pub struct NoEmbeddings;

impl EmbeddingLookup for NoEmbeddings {
    fn at(&self, _: &[u32]) -> Result<Option<EmbeddingMatch>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> &'static ClipTokenizer {
        ClipTokenizer::shared().expect("embedded vocabulary")
    }

    #[test]
    fn special_and_simple_tokens() {
        let t = tok();
        assert_eq!(t.encode("a"), vec![320]);
        assert_eq!(t.encode("<|startoftext|>"), vec![BOS]);
        assert_eq!(t.encode("A   a"), t.encode("a a"));
    }

    #[test]
    fn windows_are_77_long_and_padded() {
        let t = tok();
        let w = t.windows("a cat", EOS);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].len(), WINDOW);
        assert_eq!(w[0][0], BOS);
        assert!(w[0][1..].iter().skip(2).all(|&x| x == EOS));
        let w0 = t.windows("", 0);
        assert_eq!(&w0[0][..3], &[BOS, EOS, 0]);
    }

    #[test]
    fn long_prompts_chunk_at_commas() {
        let t = tok();
        let long = vec!["red"; 70].join(" ") + ", " + &vec!["blue"; 20].join(" ");
        let w = t.windows(&long, EOS);
        assert_eq!(w.len(), 2);
        // The first window ends right after the comma: 70 words + comma, then EOS.
        assert_eq!(w[0][71], t.comma);
        assert_eq!(w[0][72], EOS);
        assert_eq!(&w[1][1..21], &vec![t.encode("blue")[0]; 20][..]);
    }

    #[test]
    fn weights_follow_their_tokens_and_break_closes_the_window() {
        let t = tok();
        let pieces = crate::prompt::parse_attention("a (red:1.5) cat BREAK [dog]");
        let w = t.weighted_windows(&pieces, EOS);
        assert_eq!(w.len(), 2);
        let red = t.encode("red")[0];
        assert_eq!(w[0].tokens[2], red);
        assert_eq!(w[0].weights[..5], [1.0, 1.0, 1.5, 1.0, 1.0]);
        assert_eq!(w[1].tokens[1], t.encode("dog")[0]);
        assert!((w[1].weights[1] - 1.0 / 1.1).abs() < 1e-6);
        assert_eq!(w[1].weights[2], 1.0);
        assert_eq!(t.window_counts(&pieces), vec![3, 1]);
        // A comma arriving when the window is full starts the next window (A1111's `elif`).
        let full = vec!["red"; 75].join(" ") + ", blue";
        let w = t.windows(&full, EOS);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1][1], t.comma);
    }
}
