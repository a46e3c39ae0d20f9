//! The prompt parser against AUTOMATIC1111's own: a few hundred random prompts in its syntax
//! (nesting, escapes, BREAK, editing, alternation, unbalanced brackets) whose schedules and
//! attention pieces A1111's `modules/prompt_parser.py` computed
//! (`tests/fixtures/prompt/make_prompt_fixtures.py`). Texts must match exactly, weights to the
//! last bit.

use latent_engine::prompt::{ScheduledText, analyse};
use serde_json::Value;

/// Equal to the last bits: serde_json's default float parser may round the last digit of
/// Python's shortest representation by one unit.
fn same_float(a: f64, b: f64) -> bool {
    (a - b).abs() <= 2.0 * f64::EPSILON * a.abs().max(b.abs())
}

fn same_schedule(got: &[ScheduledText], want: &[Value]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            let att = w["attention"].as_array().expect("attention");
            g.until_step == w["until_step"].as_i64().expect("until_step")
                && g.text == w["text"].as_str().expect("text")
                && att.len() == g.attention.len()
                && g.attention
                    .iter()
                    .zip(att)
                    .all(|((t, wt), p)| p[0].as_str() == Some(t.as_str()) && p[1].as_f64().is_some_and(|a| same_float(a, *wt)))
        })
}

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/prompt/a1111_prompts.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

#[test]
fn schedules_and_weights_match_a1111() {
    let doc = fixture();
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 300, "{} cases", cases.len());
    let mut multi = 0;
    let mut failures = vec![];
    for c in cases {
        let prompt = c["prompt"].as_str().expect("prompt");
        let steps = c["steps"].as_u64().expect("steps") as u32;
        let want = c["schedule"].as_array().expect("schedule");
        let got = analyse(prompt, steps);
        if want.len() > 1 {
            multi += 1;
        }
        if !same_schedule(&got, want) {
            failures.push(format!(
                "{prompt:?} steps {steps}\n  ours  {:?}\n  a1111 {}",
                got,
                serde_json::to_string(want).unwrap_or_default()
            ));
        }
    }
    assert!(multi > 50, "only {multi} prompts with a schedule");
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

/// Where A1111's grammar allows several parses its answer changes with Python's hash seed
/// (lark 1.1.2, as A1111 pins it): ours must be one of the answers A1111 gave.
#[test]
fn ambiguous_prompts_get_one_of_a1111s_answers() {
    let doc = fixture();
    let cases = doc["ambiguous"].as_array().expect("ambiguous");
    assert!(!cases.is_empty());
    let mut failures = vec![];
    for c in cases {
        let prompt = c["prompt"].as_str().expect("prompt");
        let steps = c["steps"].as_u64().expect("steps") as u32;
        let got = analyse(prompt, steps);
        let answers = c["schedules"].as_array().expect("schedules");
        if !answers.iter().any(|a| same_schedule(&got, a.as_array().expect("schedule"))) {
            failures.push(format!("{prompt:?} steps {steps}: ours {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
