//! `latent-studio prompt`: how the engine reads a prompt in A1111's syntax: the schedule of
//! texts over the steps (prompt editing, alternation) and each text's weighted pieces.

use anyhow::Result;
use latent_engine::prompt::{analyse, is_break};

#[derive(clap::Args, Debug)]
pub struct PromptArgs {
    /// The prompt, in A1111's syntax: (word:1.2), [word], [from:to:when], [a|b], BREAK.
    pub prompt: String,
    /// Sampling steps the schedule is computed for.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub steps: u32,
    /// Print JSON: {"schedule": [{"until_step", "text", "attention": [[text, weight], ...]}]}.
    #[arg(long)]
    pub json: bool,
}

pub fn prompt(a: PromptArgs) -> Result<()> {
    let schedule = analyse(&a.prompt, a.steps);
    if a.json {
        println!("{}", serde_json::to_string(&serde_json::json!({ "schedule": schedule }))?);
        return Ok(());
    }
    // A1111 counts denoiser calls from 0; a text serves the calls up to its `until_step`.
    println!("denoiser calls (from 0) and the text they use, for {} steps:", a.steps);
    let mut from = 0i64;
    for entry in &schedule {
        let span = if entry.until_step <= from {
            format!("call {}", entry.until_step)
        } else {
            format!("calls {from}..={}", entry.until_step)
        };
        println!("{span}: {:?}", entry.text);
        for piece in &entry.attention {
            if is_break(piece) {
                println!("    BREAK (new 75-token window)");
            } else {
                println!("    {:>8.4}  {:?}", piece.1, piece.0);
            }
        }
        from = entry.until_step.max(from) + 1;
    }
    Ok(())
}
