//! History: every finished image (saved automatically), newest first; a click shows it and
//! restores its settings.

use eframe::egui;

use crate::gui::actions::{Action, View};
use crate::gui::state::{Level, Shown, file_name};

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    ui.heading("History");
    ui.horizontal(|ui| {
        if ui
            .button("Copy")
            .on_hover_text("Copy the image on the canvas to the clipboard")
            .clicked()
        {
            view.act(Action::CopyShown);
        }
        if ui
            .button("To img2img")
            .on_hover_text("Start image to image from the image on the canvas")
            .clicked()
        {
            view.act(Action::ShownToInit);
        }
        ui.menu_button("Upscale", |ui| {
            if view.session.found_upscalers.is_empty() {
                ui.weak("No upscaler models: put ESRGAN-family .safetensors files in models/ESRGAN of a model folder.");
            }
            for f in view.session.found_upscalers.clone() {
                if ui
                    .button(crate::gui::state::file_stem(&f))
                    .on_hover_text(f.display().to_string())
                    .clicked()
                {
                    view.act(Action::UpscaleShown(f));
                    ui.close();
                }
            }
        })
        .response
        .on_hover_text("Enlarge the image on the canvas with an upscaler model (a new image in the history)");
        let selected_path = match view.session.shown {
            Shown::History(i) => view.session.history.get(i).and_then(|h| h.path.clone()),
            _ => view.session.history.first().and_then(|h| h.path.clone()),
        };
        if ui.button("Show in folder").clicked() {
            let target = selected_path.unwrap_or_else(|| view.settings.output_dir.clone());
            if let Err(e) = crate::gui::files::reveal(&target) {
                view.session.say(Level::Error, e);
            }
        }
    });
    ui.weak(format!("Saved to: {}", file_name(&view.settings.output_dir)))
        .on_hover_text(view.settings.output_dir.display().to_string());
    if view.session.history.is_empty() {
        ui.weak("Finished images appear here.");
        return;
    }
    let mut clicked = None;
    egui::ScrollArea::vertical().id_salt("history-scroll").show(ui, |ui| {
        let width = ui.available_width();
        let per_row = ((width / 100.0).floor() as usize).max(1);
        let pad = 2.0 * (ui.spacing().button_padding.x + ui.spacing().item_spacing.x) + 2.0;
        let side = (width / per_row as f32 - pad).max(40.0);
        for (row, chunk) in view.session.history.chunks(per_row).enumerate() {
            ui.horizontal(|ui| {
                for (k, h) in chunk.iter().enumerate() {
                    let i = row * per_row + k;
                    let [w, hh] = h.size;
                    let s = side / w.max(hh).max(1) as f32;
                    let size = egui::vec2(w as f32 * s, hh as f32 * s);
                    let selected = view.session.shown == Shown::History(i);
                    let mut tip = h.parameters.clone();
                    if let Some(p) = &h.path {
                        tip.push_str(&format!("\n\n{}", p.display()));
                    }
                    let r = ui
                        .add(egui::Button::image((h.texture.id(), size)).selected(selected))
                        .on_hover_text(tip);
                    if r.clicked() {
                        clicked = Some(i);
                    }
                }
            });
        }
    });
    if let Some(i) = clicked {
        view.act(Action::SelectHistory(i));
    }
}
