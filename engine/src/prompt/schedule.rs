//! Prompt editing and alternation, as A1111's `get_learned_conditioning_prompt_schedules`:
//! `[from:to:when]`, `[to:when]`, `[from::when]` (when < 1: a fraction of the steps),
//! `[a|b|c]` (one option per step), nested; everything else is kept verbatim for the
//! attention parser.
//!
//! A1111 parses with a lark grammar; this is a recursive-descent parser of the same grammar:
//!
//! ```text
//! start:      (prompt | /[][():]/+)*
//! prompt:     (emphasized | scheduled | alternate | plain | WHITESPACE)*
//! emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
//! scheduled:  "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER "]"
//! alternate:  "[" prompt ("|" prompt)+ "]"
//! plain:      /([^\\\[\]():|]|\\.)+/
//! ```
//!
//! A prompt the grammar does not accept (a `|` outside brackets, a trailing lone `\`) is one
//! schedule entry with the text unchanged, as in A1111.

/// One item of a `prompt`.
#[derive(Debug, Clone)]
enum Node {
    /// Plain text, whitespace, a stray bracket or colon: kept as written.
    Lit(String),
    /// `(...)`, `(...:...)`, `[...]`: brackets kept, schedules inside resolved.
    Group(Vec<Node>),
    /// `[before:after:when]`, `[after:when]`.
    Scheduled {
        before: Option<Vec<Node>>,
        after: Vec<Node>,
        when: f64,
    },
    /// `[a|b|...]`.
    Alternate(Vec<Vec<Node>>),
}

struct Parser<'a> {
    s: &'a [char],
}

fn is_special(c: char) -> bool {
    matches!(c, '\\' | '[' | ']' | '(' | ')' | ':' | '|')
}

impl Parser<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    /// `\` followed by any character but a line feed (the regex `\\.`).
    fn escape_at(&self, i: usize) -> bool {
        self.at(i) == Some('\\') && self.at(i + 1).is_some_and(|c| c != '\n')
    }

    /// A run of plain characters and escapes from `i` (at least one).
    fn plain(&self, mut i: usize) -> (String, usize) {
        let start = i;
        while let Some(c) = self.at(i) {
            if self.escape_at(i) {
                i += 2;
            } else if !is_special(c) {
                i += 1;
            } else {
                break;
            }
        }
        (self.s[start..i].iter().collect(), i)
    }

    /// A `prompt` from `i`: items until a character that cannot continue one.
    fn prompt(&self, mut i: usize) -> (Vec<Node>, usize) {
        let mut items = vec![];
        while let Some(c) = self.at(i) {
            if c == '[' || c == '(' {
                match self.construct(i) {
                    Some((n, j)) => {
                        items.push(n);
                        i = j;
                    }
                    None => break,
                }
            } else if c == '\\' && !self.escape_at(i) {
                break;
            } else if c == '\\' || !is_special(c) {
                let (t, j) = self.plain(i);
                items.push(Node::Lit(t));
                i = j;
            } else {
                break;
            }
        }
        (items, i)
    }

    /// `[WHITESPACE] NUMBER "]"` from `i`: the number and the position after `]`.
    fn number_close(&self, mut i: usize) -> Option<(f64, usize)> {
        while self.at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let start = i;
        if matches!(self.at(i), Some('+' | '-')) {
            i += 1;
        }
        let digits = |mut k: usize| {
            let s = k;
            while self.at(k).is_some_and(|c| c.is_ascii_digit()) {
                k += 1;
            }
            (k, k > s)
        };
        let (k, int_part) = digits(i);
        i = k;
        let mut frac_part = false;
        if self.at(i) == Some('.') {
            let (k, f) = digits(i + 1);
            if int_part || f {
                i = k;
                frac_part = f;
            }
        }
        if !int_part && !frac_part {
            return None;
        }
        if matches!(self.at(i), Some('e' | 'E')) {
            let mut k = i + 1;
            if matches!(self.at(k), Some('+' | '-')) {
                k += 1;
            }
            let (k2, exp) = digits(k);
            if exp {
                i = k2;
            }
        }
        if self.at(i) != Some(']') {
            return None;
        }
        let text: String = self.s[start..i].iter().collect();
        text.parse::<f64>().ok().map(|v| (v, i + 1))
    }

    /// A bracketed construct at `i` (`(` or `[`), or None where the grammar has none.
    fn construct(&self, i: usize) -> Option<(Node, usize)> {
        let lit = |s: &str| Node::Lit(s.to_string());
        if self.at(i) == Some('(') {
            let (p1, j) = self.prompt(i + 1);
            return match self.at(j) {
                Some(')') => Some((Node::Group([vec![lit("(")], p1, vec![lit(")")]].concat()), j + 1)),
                Some(':') => {
                    let (p2, k) = self.prompt(j + 1);
                    (self.at(k) == Some(')')).then(|| {
                        (
                            Node::Group([vec![lit("(")], p1, vec![lit(":")], p2, vec![lit(")")]].concat()),
                            k + 1,
                        )
                    })
                }
                _ => None,
            };
        }
        let (p1, j) = self.prompt(i + 1);
        match self.at(j) {
            Some(']') => Some((Node::Group([vec![lit("[")], p1, vec![lit("]")]].concat()), j + 1)),
            Some('|') => {
                let mut options = vec![p1];
                let mut j = j;
                loop {
                    let (p, k) = self.prompt(j + 1);
                    options.push(p);
                    match self.at(k) {
                        Some('|') => j = k,
                        Some(']') => return Some((Node::Alternate(options), k + 1)),
                        _ => return None,
                    }
                }
            }
            Some(':') => {
                if let Some((when, k)) = self.number_close(j + 1) {
                    return Some((
                        Node::Scheduled {
                            before: None,
                            after: p1,
                            when,
                        },
                        k,
                    ));
                }
                let (p2, k) = self.prompt(j + 1);
                if self.at(k) != Some(':') {
                    return None;
                }
                let (when, k) = self.number_close(k + 1)?;
                Some((
                    Node::Scheduled {
                        before: Some(p1),
                        after: p2,
                        when,
                    },
                    k,
                ))
            }
            _ => None,
        }
    }

    /// `start`: prompts and stray `[]():`; None where the grammar rejects the text.
    fn start(&self) -> Option<Vec<Node>> {
        let mut nodes = vec![];
        let mut i = 0;
        while let Some(c) = self.at(i) {
            let (items, j) = self.prompt(i);
            if j > i {
                nodes.extend(items);
                i = j;
                continue;
            }
            if matches!(c, '[' | ']' | '(' | ')' | ':') {
                nodes.push(Node::Lit(c.to_string()));
                i += 1;
            } else {
                return None;
            }
        }
        Some(nodes)
    }
}

/// A1111's step number of a `when`: fractions below 1 scale by the steps, then truncate, at
/// most `steps`.
fn when_step(when: f64, steps: i64) -> i64 {
    let w = if when < 1.0 { when * steps as f64 } else { when };
    (w.trunc() as i64).min(steps)
}

fn collect(nodes: &[Node], steps: i64, out: &mut Vec<i64>) {
    for n in nodes {
        match n {
            Node::Lit(_) => {}
            Node::Group(inner) => collect(inner, steps, out),
            Node::Scheduled { before, after, when } => {
                if let Some(b) = before {
                    collect(b, steps, out);
                }
                collect(after, steps, out);
                out.push(when_step(*when, steps));
            }
            Node::Alternate(options) => {
                for o in options {
                    collect(o, steps, out);
                }
                out.extend(1..=steps);
            }
        }
    }
}

fn render(nodes: &[Node], step: i64, steps: i64, out: &mut String) {
    for n in nodes {
        match n {
            Node::Lit(s) => out.push_str(s),
            Node::Group(inner) => render(inner, step, steps, out),
            Node::Scheduled { before, after, when } => {
                if step <= when_step(*when, steps) {
                    if let Some(b) = before {
                        render(b, step, steps, out);
                    }
                } else {
                    render(after, step, steps, out);
                }
            }
            Node::Alternate(options) => {
                let o = &options[(step - 1).rem_euclid(options.len() as i64) as usize];
                // A1111 takes the first item of the chosen option only (`next()` of its
                // generator); an empty option, an error there, is empty text here.
                if let Some(first) = o.first() {
                    render(std::slice::from_ref(first), step, steps, out);
                }
            }
        }
    }
}

/// The prompt's schedule for `steps` steps: `(until_step, text)` pairs, A1111's
/// `get_learned_conditioning_prompt_schedules([prompt], steps)[0]`. Denoiser call `n`
/// (from 0) uses the first entry whose `until_step >= n`.
pub fn prompt_schedule(prompt: &str, steps: u32) -> Vec<(i64, String)> {
    let steps = steps as i64;
    let chars: Vec<char> = prompt.chars().collect();
    let Some(tree) = (Parser { s: &chars }).start() else {
        return vec![(steps, prompt.to_string())];
    };
    let mut at = vec![steps];
    collect(&tree, steps, &mut at);
    at.sort_unstable();
    at.dedup();
    at.into_iter()
        .map(|t| {
            let mut s = String::new();
            render(&tree, t, steps, &mut s);
            (t, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str) -> Vec<(i64, String)> {
        prompt_schedule(p, 10)
    }

    fn v(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
        pairs.iter().map(|(t, s)| (*t, s.to_string())).collect()
    }

    // A1111's doctests of get_learned_conditioning_prompt_schedules, one by one (the one it
    // marks "not handling this right now" is left out).
    #[test]
    fn a1111_doctests() {
        assert_eq!(g("test"), v(&[(10, "test")]));
        assert_eq!(g("a [b:3]"), v(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [b: 3]"), v(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [[[b]]:2]"), v(&[(2, "a "), (10, "a [[b]]")]));
        assert_eq!(g("[(a:2):3]"), v(&[(3, ""), (10, "(a:2)")]));
        assert_eq!(g("a [b : c : 1] d"), v(&[(1, "a b  d"), (10, "a  c  d")]));
        assert_eq!(g("a[b:[c:d:2]:1]e"), v(&[(1, "abe"), (2, "ace"), (10, "ade")]));
        assert_eq!(g("a [unbalanced"), v(&[(10, "a [unbalanced")]));
        assert_eq!(g("a [b:.5] c"), v(&[(5, "a  c"), (10, "a b c")]));
        assert_eq!(g("((a][:b:c [d:3]"), v(&[(3, "((a][:b:c "), (10, "((a][:b:c d")]));
        let alt: Vec<(i64, String)> = (1..=10)
            .map(|i| (i, if i % 2 == 1 { "a" } else { "(b:1.1)" }.to_string()))
            .collect();
        assert_eq!(g("[a|(b:1.1)]"), alt);
    }

    #[test]
    fn odd_inputs_keep_the_text() {
        // A `|` outside brackets and a trailing lone backslash are outside the grammar.
        assert_eq!(g("a | b [c:3]"), v(&[(10, "a | b [c:3]")]));
        assert_eq!(g("a [b:3] \\"), v(&[(10, "a [b:3] \\")]));
        // Escaped brackets are plain text, kept with their backslashes.
        assert_eq!(g("\\[a:3\\] [b:3]"), v(&[(3, "\\[a:3\\] "), (10, "\\[a:3\\] b")]));
        // A number not right before `]` is text, not a step.
        assert_eq!(g("[a:3 ]"), v(&[(10, "[a:3 ]")]));
        // Steps past the end are capped, negative ones kept as A1111 does.
        assert_eq!(g("[a:b:25]"), v(&[(10, "a")]));
        assert_eq!(g("[a:b:-2]"), v(&[(-20, "a"), (10, "b")]));
        // Fractions scale by the steps and truncate.
        assert_eq!(prompt_schedule("[a:b:0.33]", 20), v(&[(6, "a"), (20, "b")]));
        // An alternation's option contributes its first item only, as in A1111.
        assert_eq!(g("[(x) y|c]")[0], (1, "(x)".to_string()));
        // An empty option (an error in A1111) is empty text.
        assert_eq!(g("[a||b]")[1], (2, String::new()));
    }
}
