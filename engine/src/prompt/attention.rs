//! Attention weights, as A1111's `parse_prompt_attention`: `(a)` x1.1, `[a]` /1.1,
//! `(a:1.3)`, nesting, `\(` `\)` `\[` `\]` `\\` escapes, unbalanced brackets closed at the
//! end, `BREAK` as the marker `("BREAK", -1.0)`, adjacent equal weights merged.

use std::sync::OnceLock;

use regex::Regex;

/// The text of A1111's `BREAK` marker; its weight is [`BREAK_WEIGHT`].
pub const BREAK: &str = "BREAK";
pub const BREAK_WEIGHT: f64 = -1.0;

fn token_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|\]|[^\\()\[\]:]+|:").expect("attention regex"))
}

fn break_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?s)\s*\bBREAK\b\s*").expect("BREAK regex"))
}

/// `(text, weight)` pieces of one prompt text. Never empty: an empty text is `("", 1.0)`.
pub fn parse_attention(text: &str) -> Vec<(String, f64)> {
    const ROUND: f64 = 1.1;
    const SQUARE: f64 = 1.0 / 1.1;
    let mut res: Vec<(String, f64)> = vec![];
    let mut round: Vec<usize> = vec![];
    let mut square: Vec<usize> = vec![];
    fn multiply(res: &mut [(String, f64)], from: usize, m: f64) {
        for r in &mut res[from..] {
            r.1 *= m;
        }
    }
    for caps in token_re().captures_iter(text) {
        let tok = caps.get(0).map_or("", |m| m.as_str());
        // A weight that does not parse as a number (`(a:1.2.3)`, where A1111 fails) is text.
        let weight = caps.get(1).and_then(|m| m.as_str().parse::<f64>().ok());
        if let Some(lit) = tok.strip_prefix('\\') {
            res.push((lit.to_string(), 1.0));
        } else if tok == "(" {
            round.push(res.len());
        } else if tok == "[" {
            square.push(res.len());
        } else if let (Some(w), true) = (weight, !round.is_empty()) {
            let from = round.pop().unwrap_or(0);
            multiply(&mut res, from, w);
        } else if tok == ")" && !round.is_empty() {
            let from = round.pop().unwrap_or(0);
            multiply(&mut res, from, ROUND);
        } else if tok == "]" && !square.is_empty() {
            let from = square.pop().unwrap_or(0);
            multiply(&mut res, from, SQUARE);
        } else {
            for (i, part) in break_re().split(tok).enumerate() {
                if i > 0 {
                    res.push((BREAK.to_string(), BREAK_WEIGHT));
                }
                res.push((part.to_string(), 1.0));
            }
        }
    }
    for pos in round {
        multiply(&mut res, pos, ROUND);
    }
    for pos in square {
        multiply(&mut res, pos, SQUARE);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    merged
}

/// Whether a piece is A1111's window break (a `BREAK` that no bracket reweighted).
pub fn is_break(piece: &(String, f64)) -> bool {
    piece.0 == BREAK && piece.1 == BREAK_WEIGHT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    // A1111's doctests of parse_prompt_attention, exact to the last bit of the weights.
    #[test]
    fn a1111_doctests() {
        assert_eq!(parse_attention("normal text"), p(&[("normal text", 1.0)]));
        assert_eq!(
            parse_attention("an (important) word"),
            p(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(parse_attention("(unbalanced"), p(&[("unbalanced", 1.1)]));
        assert_eq!(parse_attention("\\(literal\\]"), p(&[("(literal]", 1.0)]));
        assert_eq!(parse_attention("(unnecessary)(parens)"), p(&[("unnecessaryparens", 1.1)]));
        assert_eq!(
            parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            p(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn breaks_weights_and_odd_inputs() {
        assert_eq!(parse_attention("a BREAK b"), p(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]));
        // Not a word of its own: text.
        assert_eq!(parse_attention("aBREAK b"), p(&[("aBREAK b", 1.0)]));
        // Inside brackets the marker is reweighted and is no longer a break (as in A1111).
        let inside = parse_attention("(a BREAK b)");
        assert!(!inside.iter().any(is_break));
        assert_eq!(parse_attention(""), p(&[("", 1.0)]));
        assert_eq!(parse_attention("[a:1.5)"), p(&[("a:1.5)", 1.0 / 1.1)]));
        assert_eq!(parse_attention("(a:1.2.3)"), p(&[("a:1.2.3)", 1.1)]));
        assert_eq!(parse_attention("\\\\ \\x"), p(&[("\\ x", 1.0)]));
        assert_eq!(parse_attention("((a:2):0.5)"), p(&[("a", 1.0)]));
    }
}
