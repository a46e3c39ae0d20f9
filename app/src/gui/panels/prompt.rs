//! Prompt, negative prompt, Generate / Cancel, batch and live mode.

use eframe::egui;

use crate::gui::actions::{Action, View};
use crate::gui::state::panel_from_prompt;

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    let label = ui.label("Prompt");
    let before = view.settings.params.prompt.clone();
    ui.add(
        egui::TextEdit::multiline(&mut view.settings.params.prompt)
            .id_salt("prompt")
            .hint_text("a yellow star on a black background <lora:outline:1>")
            .desired_rows(4)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id);
    if view.settings.params.prompt != before
        && panel_from_prompt(&view.settings.params.prompt, &mut view.settings.loras, &view.session.found_loras)
    {
        view.act(Action::PushLoras);
    }
    let label = ui.label("Negative prompt");
    ui.add(
        egui::TextEdit::multiline(&mut view.settings.params.negative)
            .id_salt("negative")
            .hint_text("what to avoid")
            .desired_rows(2)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id);
    ui.add_space(4.0);
    ui.horizontal(|ui| {
        let busy = view.session.is_busy();
        let generate = ui
            .add_sized([120.0, 30.0], egui::Button::new(egui::RichText::new("Generate").strong()))
            .on_hover_text("Ctrl+Enter");
        if generate.clicked() {
            view.act(Action::Generate);
        }
        if ui.add_enabled(busy, egui::Button::new("Cancel")).on_hover_text("Esc").clicked() {
            view.act(Action::Cancel);
        }
        ui.label("×");
        ui.add(egui::DragValue::new(&mut view.settings.params.batch).range(1..=64))
            .on_hover_text("Images per click (seed, seed+1, …)");
    });
    ui.checkbox(&mut view.settings.live, "Live: regenerate when a setting changes")
        .on_hover_text("The running job is cancelled and a new one starts once the sliders rest");
}
