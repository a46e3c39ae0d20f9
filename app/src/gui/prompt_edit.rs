//! Prompt editing helpers of the window: A1111's Ctrl+Up/Down weight keys and the per-window
//! token counter.

use latent_engine::prompt::{parse_attention, prompt_schedule};
use latent_engine::tokenizer::{CHUNK, ClipTokenizer};

/// Characters that end a word for the weight keys (A1111's default delimiters, plus brackets).
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || ".,\\/!?%^*;:{}=`~()[]|<>".contains(c)
}

/// `(` at `open`, then `text:NUMBER)`: the number's span (chars) and value.
fn weight_after(chars: &[char], from: usize) -> Option<(usize, usize, f64)> {
    if chars.get(from) != Some(&':') {
        return None;
    }
    let start = from + 1;
    let mut end = start;
    while end < chars.len() && (chars[end].is_ascii_digit() || matches!(chars[end], '.' | '+' | '-')) {
        end += 1;
    }
    if chars.get(end) != Some(&')') {
        return None;
    }
    let v: f64 = chars[start..end].iter().collect::<String>().parse().ok()?;
    Some((start, end, v))
}

/// A1111's Ctrl+Up (`up`) / Ctrl+Down on `text` with the selection `sel` (char indices, start
/// <= end): with no selection, the `(text:w)` block around the cursor, or else the word under
/// it. A selection already written `(sel:w)` gets `w ± 0.1` (brackets dropped at 1.0); any
/// other is wrapped as `(sel:1.1)` / `(sel:0.9)`. Returns the new text and selection, or None
/// where there is nothing to weight.
pub fn edit_weight(text: &str, sel: (usize, usize), up: bool) -> Option<(String, (usize, usize))> {
    let chars: Vec<char> = text.chars().collect();
    let (mut a, mut b) = (sel.0.min(chars.len()), sel.1.min(chars.len()));
    if a == b {
        // Inside a weighted block: its text.
        let open = chars[..a].iter().rposition(|&c| c == '(' || c == ')').filter(|&i| chars[i] == '(');
        let close = chars[a..]
            .iter()
            .position(|&c| c == ')' || c == '(')
            .map(|i| a + i)
            .filter(|&i| chars[i] == ')');
        let colon = match (open, close) {
            (Some(o), Some(c)) => chars[o..c].iter().rposition(|&x| x == ':').map(|i| o + i),
            _ => None,
        };
        if let (Some(o), Some(k)) = (open, colon)
            && weight_after(&chars, k).is_some()
        {
            a = o + 1;
            b = k;
        } else {
            while a > 0 && !is_delimiter(chars[a - 1]) {
                a -= 1;
            }
            while b < chars.len() && !is_delimiter(chars[b]) {
                b += 1;
            }
        }
        if a == b {
            return None;
        }
    }
    let step = if up { 0.1 } else { -0.1 };
    let s = |r: &[char]| r.iter().collect::<String>();
    if a > 0
        && chars[a - 1] == '('
        && let Some((ws, we, w)) = weight_after(&chars, b)
    {
        let nw = ((w + step) * 1e6).round() / 1e6;
        if (nw - 1.0).abs() < 1e-9 {
            let out = s(&chars[..a - 1]) + &s(&chars[a..b]) + &s(&chars[we + 1..]);
            return Some((out, (a - 1, b - 1)));
        }
        let out = s(&chars[..ws]) + &latent_engine::metadata::short_number(nw) + &s(&chars[we..]);
        return Some((out, (a, b)));
    }
    let w = if up { "1.1" } else { "0.9" };
    let out = s(&chars[..a]) + "(" + &s(&chars[a..b]) + ":" + w + ")" + &s(&chars[b..]);
    Some((out, (a + 1, b + 1)))
}

/// Prompt tokens in each 75-token window of the prompt (the schedule's longest text, as
/// A1111's counter does), `<lora:..>` tags left out.
pub fn token_counts(prompt: &str, steps: u32) -> Vec<usize> {
    let Ok(tok) = ClipTokenizer::shared() else {
        return vec![];
    };
    let (clean, _) = latent_engine::lora::extract_prompt_tags(prompt);
    prompt_schedule(&clean, steps.max(1))
        .iter()
        .map(|(_, t)| tok.window_counts(&parse_attention(t)))
        .max_by_key(|c| (c.len(), c.iter().sum::<usize>()))
        .unwrap_or_default()
}

/// `42/75`, or `75/75 · 12/75` for several windows.
pub fn counter_text(counts: &[usize]) -> String {
    counts.iter().map(|c| format!("{c}/{CHUNK}")).collect::<Vec<_>>().join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_keys_follow_a1111() {
        // Word under the cursor wrapped, then raised, lowered back to 1 and unwrapped.
        let (t, sel) = edit_weight("a red cat", (3, 3), true).expect("word");
        assert_eq!((t.as_str(), sel), ("a (red:1.1) cat", (3, 6)));
        let (t, sel) = edit_weight(&t, sel, true).expect("raise");
        assert_eq!(t, "a (red:1.2) cat");
        let (t, sel) = edit_weight(&t, sel, false).expect("lower");
        assert_eq!(t, "a (red:1.1) cat");
        let (t, sel) = edit_weight(&t, sel, false).expect("to one");
        assert_eq!((t.as_str(), sel), ("a red cat", (2, 5)));
        // A selection of several words; Ctrl+Down from 1.
        let (t, _) = edit_weight("a red cat", (2, 9), false).expect("selection");
        assert_eq!(t, "a (red cat:0.9)");
        // The cursor inside an existing weighted block adjusts that block.
        let (t, _) = edit_weight("x (big dog:1.3), y", (5, 5), true).expect("block");
        assert_eq!(t, "x (big dog:1.4), y");
        // Nothing to weight.
        assert!(edit_weight("a  b", (2, 2), true).is_none());
        assert!(edit_weight("", (0, 0), true).is_none());
        // Non-ASCII text: indices are characters.
        let (t, _) = edit_weight("café noir", (2, 2), true).expect("unicode");
        assert_eq!(t, "(café:1.1) noir");
    }

    #[test]
    fn counter_counts_windows() {
        assert_eq!(counter_text(&token_counts("a cat", 20)), "2/75");
        assert_eq!(token_counts("a BREAK b c <lora:x:1>", 20), vec![1, 2]);
        let long = vec!["red"; 80].join(" ");
        assert_eq!(counter_text(&token_counts(&long, 20)), "75/75 · 5/75");
        // The schedule's longest text counts.
        assert_eq!(token_counts("[a:a b c d:5]", 20), vec![4]);
    }
}
