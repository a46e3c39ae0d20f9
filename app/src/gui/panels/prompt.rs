//! Prompt, negative prompt, Generate / Cancel, batch and live mode.

use eframe::egui;

use crate::gui::actions::{Action, Dialog, View};
use crate::gui::prompt_edit::{counter_text, edit_weight, token_counts};
use crate::gui::state::GenMode;
use crate::gui::state::panel_from_prompt;
use crate::resize::ResizeMode;

/// Ids of the two prompt fields (for the weight keys).
pub const PROMPT_ID: &str = "prompt-field";
pub const NEGATIVE_ID: &str = "negative-field";

/// A1111's Ctrl+Up / Ctrl+Down on the focused field: raise or lower the weight of the
/// selection or of the word (or weighted block) under the cursor.
fn weight_keys(ui: &egui::Ui, id: egui::Id, text: &mut String) {
    if !ui.memory(|m| m.has_focus(id)) {
        return;
    }
    let up = ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::ArrowUp));
    let down = !up && ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::ArrowDown));
    if !up && !down {
        return;
    }
    let Some(mut state) = egui::TextEdit::load_state(ui.ctx(), id) else {
        return;
    };
    let (a, b) = state.cursor.char_range().map_or((0, 0), |r| {
        let (x, y): (usize, usize) = (r.primary.index.into(), r.secondary.index.into());
        (x.min(y), x.max(y))
    });
    if let Some((new, (s, e))) = edit_weight(text, (a, b), up) {
        *text = new;
        state.cursor.set_char_range(Some(egui::text::CCursorRange::two(
            egui::text::CCursor::new(s),
            egui::text::CCursor::new(e),
        )));
        state.store(ui.ctx(), id);
    }
}

/// Text or image to image; in image mode the picture, strength and fitting.
fn mode_switch(view: &mut View, ui: &mut egui::Ui) {
    let p = &mut view.settings.params;
    ui.horizontal(|ui| {
        ui.selectable_value(&mut p.mode, GenMode::Text, "Text to image");
        ui.selectable_value(&mut p.mode, GenMode::Image, "Image to image");
        ui.selectable_value(&mut p.mode, GenMode::Inpaint, "Inpaint");
    });
    if p.mode == GenMode::Text {
        return;
    }
    let inpaint = p.mode == GenMode::Inpaint;
    ui.horizontal(|ui| {
        match &mut view.session.init {
            Some(init) => {
                let texture = init.texture.get_or_insert_with(|| {
                    let img = &init.image;
                    let color = egui::ColorImage::from_rgb([img.width as usize, img.height as usize], &img.pixels);
                    ui.ctx().load_texture("init-image", color, egui::TextureOptions::LINEAR)
                });
                let side = 64.0;
                let [w, h] = texture.size();
                let scale = side / (w.max(h).max(1) as f32);
                ui.image((texture.id(), egui::vec2(w as f32 * scale, h as f32 * scale)))
                    .on_hover_text(format!("{} ({}x{})", init.name, init.image.width, init.image.height));
            }
            None => {
                ui.weak("No picture yet: open or drop one");
            }
        }
        ui.vertical(|ui| {
            if ui.button("Open picture…").clicked() {
                view.act(Action::Dialog(Dialog::InitImage));
            }
            if ui
                .button("Paste")
                .on_hover_text("Take the picture on the clipboard (copied from a browser or an image editor)")
                .clicked()
            {
                view.act(Action::PasteInit);
            }
            if view.session.init.is_some() && ui.button("Clear").clicked() {
                view.act(Action::ClearInit);
            }
        });
    });
    if inpaint {
        ui.horizontal(|ui| {
            let painted = view.session.init.as_ref().map(|i| i.painted());
            if ui
                .add_enabled(painted.is_some(), egui::Button::new("Edit mask…"))
                .on_hover_text("Paint where the picture should change")
                .clicked()
            {
                view.session.show_mask_editor = true;
            }
            if ui.add_enabled(painted.is_some(), egui::Button::new("Load mask…")).clicked() {
                view.act(Action::Dialog(Dialog::Mask));
            }
            if let Some(f) = painted {
                ui.weak(format!("{:.0}% to repaint", f * 100.0));
            }
        });
        ui.horizontal(|ui| {
            // Outpainting: the picture grows on one side (or all), the new border is the mask.
            let l = ui.label("Extend");
            if view.session.outpaint_by == 0 {
                view.session.outpaint_by = 64;
            }
            ui.add(egui::DragValue::new(&mut view.session.outpaint_by).range(8..=1024).suffix(" px"))
                .labelled_by(l.id)
                .on_hover_text("Outpainting: how far the picture grows; the new border becomes the mask");
            let by = view.session.outpaint_by;
            let has = view.session.init.is_some();
            for (label, sides, hover) in [
                ("left", [by, 0, 0, 0], "Extend the picture to the left"),
                ("up", [0, by, 0, 0], "Extend the picture upwards"),
                ("right", [0, 0, by, 0], "Extend the picture to the right"),
                ("down", [0, 0, 0, by], "Extend the picture downwards"),
                ("all", [by, by, by, by], "Extend the picture on every side"),
            ] {
                if ui.add_enabled(has, egui::Button::new(label)).on_hover_text(hover).clicked() {
                    view.act(Action::Outpaint(sides));
                }
            }
        });
        let p = &mut view.settings.params;
        ui.horizontal(|ui| {
            let l = ui.label("Mask blur");
            ui.add(egui::Slider::new(&mut p.mask_blur, 0..=64).suffix(" px"))
                .labelled_by(l.id)
                .on_hover_text("The result is pasted over the picture through the mask blurred this much (A1111's Mask blur)");
        });
        ui.horizontal(|ui| {
            use latent_engine::protocol::InpaintArea;
            let mut only = p.inpaint_area == InpaintArea::Masked;
            if ui
                .checkbox(&mut only, "Only masked")
                .on_hover_text(
                    "Repaint only the mask's neighbourhood, enlarged to Width x Height, and paste it back: small repairs \
                     get the model's full resolution and the picture keeps its size (A1111's Inpaint area)",
                )
                .changed()
            {
                p.inpaint_area = if only { InpaintArea::Masked } else { InpaintArea::Whole };
            }
            ui.add_enabled(only, egui::Slider::new(&mut p.masked_padding, 0..=256).suffix(" px"))
                .on_hover_text("Pixels kept around the mask's box (A1111's Masked area padding)");
        });
        ui.horizontal(|ui| {
            use latent_engine::protocol::MaskedContent;
            let l = ui.label("Masked content");
            egui::ComboBox::from_id_salt("masked-content")
                .selected_text(p.masked_content.name())
                .show_ui(ui, |ui| {
                    for c in MaskedContent::ALL {
                        ui.selectable_value(&mut p.masked_content, c, c.name());
                    }
                })
                .response
                .labelled_by(l.id)
                .on_hover_text("What the masked region starts from below strength 1: the picture, its surrounding colours blurred in, fresh noise or nothing");
        });
    }
    let p = &mut view.settings.params;
    ui.horizontal(|ui| {
        let l = ui.label("Strength");
        ui.add(
            egui::Slider::new(&mut p.strength, 0.0..=1.0)
                .step_by(0.01)
                .custom_parser(|s| s.trim().parse::<f64>().ok().filter(|v| v.is_finite())),
        )
        .labelled_by(l.id)
        .on_hover_text("Denoising strength: how much of the schedule runs (0.3 keeps the picture, 0.8 keeps its layout)");
    });
    ui.horizontal(|ui| {
        let l = ui.label("Fit");
        egui::ComboBox::from_id_salt("resize-mode")
            .selected_text(resize_name(p.resize_mode))
            .show_ui(ui, |ui| {
                for m in [ResizeMode::Just, ResizeMode::Crop, ResizeMode::Fill] {
                    ui.selectable_value(&mut p.resize_mode, m, resize_name(m));
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text("How a picture of another size than Width x Height is fitted");
    });
}

fn resize_name(m: ResizeMode) -> &'static str {
    match m {
        ResizeMode::Just => "just resize",
        ResizeMode::Crop => "crop and resize",
        ResizeMode::Fill => "resize and fill",
    }
}

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    mode_switch(view, ui);
    let counts = token_counts(&view.settings.params.prompt, view.settings.params.steps);
    let label = ui
        .horizontal(|ui| {
            let label = ui.label("Prompt");
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                ui.weak(counter_text(&counts))
                    .on_hover_text("Prompt tokens per 75-token window (BREAK or a long prompt starts another)");
            });
            label
        })
        .inner;
    let before = view.settings.params.prompt.clone();
    let prompt_id = egui::Id::unique(PROMPT_ID);
    weight_keys(ui, prompt_id, &mut view.settings.params.prompt);
    ui.add(
        egui::TextEdit::multiline(&mut view.settings.params.prompt)
            .id(prompt_id)
            .hint_text("a yellow star on a black background <lora:outline:1>")
            .desired_rows(4)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id)
    .on_hover_text("A1111 syntax: (word:1.2) [word] [from:to:0.5] [a|b] BREAK; Ctrl+Up/Down weights the word under the cursor");
    if view.settings.params.prompt != before
        && panel_from_prompt(&view.settings.params.prompt, &mut view.settings.loras, &view.session.found_loras)
    {
        view.act(Action::PushLoras);
    }
    embedding_list(view, ui);
    let label = ui.label("Negative prompt");
    let negative_id = egui::Id::unique(NEGATIVE_ID);
    weight_keys(ui, negative_id, &mut view.settings.params.negative);
    ui.add(
        egui::TextEdit::multiline(&mut view.settings.params.negative)
            .id(negative_id)
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

/// The embeddings found in the model folders: a click adds the name to the prompt (A1111
/// calls an embedding by its file name).
fn embedding_list(view: &mut View, ui: &mut egui::Ui) {
    if view.session.found_embeddings.is_empty() {
        return;
    }
    let names = view.session.found_embeddings.clone();
    egui::CollapsingHeader::new(format!("Embeddings ({})", names.len()))
        .id_salt("embeddings")
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                for n in &names {
                    if ui
                        .small_button(n)
                        .on_hover_text("Add to the prompt (ComfyUI's embedding:name works too)")
                        .clicked()
                    {
                        let p = &mut view.settings.params.prompt;
                        if !p.trim().is_empty() && !p.trim_end().ends_with(',') {
                            p.push_str(", ");
                        }
                        p.push_str(n);
                    }
                }
            });
        });
}
