//! A1111's prompt syntax: the per-step schedule (prompt editing, alternation) and the
//! attention weights of each scheduled text. See README "Prompt syntax".

mod attention;
mod schedule;

pub use attention::{BREAK, BREAK_WEIGHT, is_break, parse_attention};
pub use schedule::prompt_schedule;

/// One entry of a prompt's schedule with its weighted pieces.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduledText {
    /// The last denoiser call (from 0) that uses this text.
    pub until_step: i64,
    pub text: String,
    /// `[text, weight]` pieces; `["BREAK", -1.0]` starts a new 75-token window.
    pub attention: Vec<(String, f64)>,
}

/// The whole analysis of a prompt for `steps` steps, as `latent-studio prompt` prints it.
pub fn analyse(prompt: &str, steps: u32) -> Vec<ScheduledText> {
    prompt_schedule(prompt, steps)
        .into_iter()
        .map(|(until_step, text)| ScheduledText {
            until_step,
            attention: parse_attention(&text),
            text,
        })
        .collect()
}
