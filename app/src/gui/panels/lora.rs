//! The LoRA panel: one row per file with an enable toggle, a strength slider and remove;
//! rows and the prompt's `<lora:name:w>` tags are kept in agreement.

use eframe::egui;

use crate::gui::actions::{Action, Dialog, View};
use crate::gui::state::prompt_from_panel;

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("LoRA");
        if ui
            .button("Add…")
            .on_hover_text("Add a LoRA / LyCORIS .safetensors file (or drop one on the window)")
            .clicked()
        {
            view.act(Action::Dialog(Dialog::Lora));
        }
    });
    if view.settings.loras.is_empty() {
        ui.weak("No LoRAs. Add one, drop one here, or type <lora:name:0.8> in the prompt.");
    }
    let mut changed: Option<usize> = None;
    let mut removed: Option<usize> = None;
    for (i, l) in view.settings.loras.iter_mut().enumerate() {
        let name = l.name();
        ui.horizontal(|ui| {
            if ui.checkbox(&mut l.enabled, "").on_hover_text("Enable").changed() {
                changed = Some(i);
            }
            ui.label(&name).on_hover_text(l.path.display().to_string());
            if ui.small_button("✖").on_hover_text("Remove").clicked() {
                removed = Some(i);
            }
        });
        let slider = ui.add_enabled(
            l.enabled,
            egui::Slider::new(&mut l.strength, -1.0..=2.0).step_by(0.05).text("strength"),
        );
        // Apply when the drag ends (or on a click/keyboard change), not on every pixel.
        if slider.drag_stopped() || (slider.changed() && !slider.dragged()) {
            changed = Some(i);
        }
        if let Some(r) = view.session.lora_reports.get(&name) {
            ui.weak(r);
        }
    }
    if let Some(i) = removed {
        let entry = view.settings.loras.remove(i);
        view.settings.params.prompt = prompt_from_panel(&view.settings.params.prompt, &entry.name(), None);
        view.act(Action::PushLoras);
    } else if let Some(i) = changed {
        let entry = view.settings.loras[i].clone();
        view.settings.params.prompt = prompt_from_panel(&view.settings.params.prompt, &entry.name(), Some(&entry));
        view.act(Action::PushLoras);
    }
}
