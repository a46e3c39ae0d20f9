//! The canvas: messages, the image forming (latest preview, then the decoded image), the
//! progress bar with it/s and ETA, and the step strip to scrub back through the previews.

use eframe::egui;

use crate::gui::actions::{Action, View};
use crate::gui::state::{Level, ModelState, Shown};

/// How long a note stays above the canvas.
const INFO_SHOWN_FOR: std::time::Duration = std::time::Duration::from_secs(6);

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    messages(view, ui);
    progress(view, ui);
    strip(view, ui);
    let shown = match view.session.shown {
        Shown::Live => view.session.canvas.as_ref().map(|(t, s)| (t.id(), *s)),
        Shown::Strip(i) => view
            .session
            .strip
            .get(i)
            .map(|f| (f.texture.id(), f.texture.size().map(|v| v as u32))),
        Shown::History(i) => view.session.history.get(i).map(|h| (h.texture.id(), h.size)),
    };
    let avail = ui.available_size();
    match shown {
        Some((id, [w, h])) => {
            let scale = (avail.x / w as f32).min(avail.y / h as f32).max(0.01);
            let size = egui::vec2(w as f32 * scale, h as f32 * scale);
            ui.centered_and_justified(|ui| {
                ui.add(egui::Image::new((id, size)).fit_to_exact_size(size))
                    .on_hover_text(format!("{w}×{h}"))
                    .context_menu(|ui| {
                        if ui.button("Copy image").clicked() {
                            view.act(Action::CopyShown);
                            ui.close();
                        }
                    });
            });
        }
        None => {
            ui.centered_and_justified(|ui| {
                let text = match view.session.model {
                    ModelState::None => "Open a model to start: File > Open model file…, or drop a .safetensors file here.",
                    ModelState::Loading { .. } => "Loading the model…",
                    ModelState::Loaded { .. } => "Type a prompt and press Generate (Ctrl+Enter).",
                };
                ui.label(egui::RichText::new(text).size(16.0).weak());
            });
        }
    }
}

fn messages(view: &mut View, ui: &mut egui::Ui) {
    // Notes (not warnings or errors) go away by themselves.
    view.session
        .messages
        .retain(|m| m.level != Level::Info || m.at.elapsed() < INFO_SHOWN_FOR);
    if let Some(next) = view
        .session
        .messages
        .iter()
        .filter(|m| m.level == Level::Info)
        .map(|m| INFO_SHOWN_FOR.saturating_sub(m.at.elapsed()))
        .min()
    {
        ui.ctx().request_repaint_after(next);
    }
    let mut dismiss = None;
    for (i, m) in view.session.messages.iter().enumerate() {
        let (color, icon) = match m.level {
            Level::Info => (ui.visuals().hyperlink_color, "ℹ"),
            Level::Warning => (ui.visuals().warn_fg_color, "⚠"),
            Level::Error => (ui.visuals().error_fg_color, "⛔"),
        };
        egui::Frame::group(ui.style()).stroke(egui::Stroke::new(1.0, color)).show(ui, |ui| {
            ui.set_min_width(ui.available_width());
            ui.horizontal(|ui| {
                ui.colored_label(color, icon);
                let width = (ui.available_width() - 70.0).max(80.0);
                ui.allocate_ui(egui::vec2(width, 0.0), |ui| {
                    ui.add(egui::Label::new(&m.text).wrap());
                });
                if ui.small_button("Dismiss").clicked() {
                    dismiss = Some(i);
                }
            });
        });
    }
    if let Some(i) = dismiss {
        view.session.messages.remove(i);
    }
}

fn progress(view: &mut View, ui: &mut egui::Ui) {
    let queued = view.session.jobs.len();
    let Some(job) = view.session.jobs.front() else { return };
    let (fraction, text) = if job.started.is_none() {
        (0.0, "waiting for the engine…".to_string())
    } else if let Some(name) = &job.upscaler {
        let frac = job.step as f32 / job.total_steps.max(1) as f32;
        (frac, format!("upscaling with {name}: tile {}/{}", job.step, job.total_steps))
    } else {
        let frac = job.step as f32 / job.total_steps.max(1) as f32;
        let mut text = format!("step {}/{}", job.step, job.total_steps);
        if let Some(rate) = job.rate() {
            text.push_str(&format!(" · {rate:.2} it/s"));
        }
        if let Some(eta) = job.eta() {
            text.push_str(&format!(" · ETA {eta:.1} s"));
        }
        text.push_str(&format!(" · {} NFE", job.nfe));
        if queued > 1 {
            text.push_str(&format!(" · {} more queued", queued - 1));
        }
        (frac, text)
    };
    ui.horizontal(|ui| {
        ui.add(
            egui::ProgressBar::new(fraction)
                .text(text)
                .desired_width(ui.available_width() - 90.0),
        );
        if ui
            .button("Cancel")
            .on_hover_text("Esc: stops before the next network evaluation")
            .clicked()
        {
            view.act(Action::Cancel);
        }
    });
}

fn strip(view: &mut View, ui: &mut egui::Ui) {
    if view.session.strip.len() < 2 {
        return;
    }
    let n = view.session.strip.len();
    let mut index = match view.session.shown {
        Shown::Strip(i) => i.min(n - 1),
        _ => n - 1,
    };
    ui.horizontal(|ui| {
        let l = ui.label("Step");
        let r = ui
            .add(egui::Slider::new(&mut index, 0..=n - 1).custom_formatter(|v, _| {
                let i = v as usize;
                view.session.strip.get(i).map(|f| f.step.to_string()).unwrap_or_default()
            }))
            .labelled_by(l.id)
            .on_hover_text("Scrub through the intermediate previews");
        if r.changed() {
            view.session.shown = Shown::Strip(index);
        }
        if ui.selectable_label(matches!(view.session.shown, Shown::Live), "latest").clicked() {
            view.session.shown = Shown::Live;
        }
    });
    egui::ScrollArea::horizontal().id_salt("strip").max_height(52.0).show(ui, |ui| {
        ui.horizontal(|ui| {
            for (i, f) in view.session.strip.iter().enumerate() {
                let selected = view.session.shown == Shown::Strip(i);
                let b = egui::Button::image((f.texture.id(), egui::vec2(40.0, 40.0))).selected(selected);
                if ui.add(b).on_hover_text(format!("step {}", f.step)).clicked() {
                    view.session.shown = Shown::Strip(i);
                }
            }
        });
    });
}
