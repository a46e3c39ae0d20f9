//! Floating windows: the per-stage timing log and folders / model options.

use eframe::egui;
use latent_engine::protocol::DType;

use crate::gui::actions::{Action, Dialog, View};
use crate::gui::state::ModelState;
use crate::gui::state::file_name;

pub fn show(view: &mut View, ctx: &egui::Context) {
    let mut open = view.session.show_timing_log;
    egui::Window::new("Timing log")
        .open(&mut open)
        .default_width(640.0)
        .show(ctx, |ui| timing_log(view, ui));
    view.session.show_timing_log = open;
    let mut open = view.session.show_settings;
    egui::Window::new("Folders and model options")
        .open(&mut open)
        .default_width(460.0)
        .show(ctx, |ui| settings(view, ui));
    view.session.show_settings = open;
    super::mask::window(view, ctx);
    super::connect::window(view, ctx);
    super::lab::window(view, ctx);
}

fn timing_log(view: &mut View, ui: &mut egui::Ui) {
    if view.session.timing_log.is_empty() {
        ui.weak("Where each image's time went appears here once one finishes.");
        return;
    }
    ui.weak("Seconds per stage. s/NFE = denoising time per network evaluation (CFG's two passes counted).");
    egui::ScrollArea::vertical().max_height(320.0).show(ui, |ui| {
        egui::Grid::new("timing-grid").striped(true).num_columns(10).show(ui, |ui| {
            for h in [
                "#", "size", "steps", "solver", "NFE", "text", "denoise", "VAE", "previews", "total", "s/NFE",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for (i, e) in view.session.timing_log.iter().enumerate().rev() {
                let (r, t) = (&e.request, &e.timings);
                ui.label((i + 1).to_string());
                ui.label(format!("{}×{}", r.width, r.height));
                ui.label(r.steps.to_string());
                ui.label(&r.solver);
                ui.label(t.nfe.to_string());
                for d in [t.text, t.denoise, t.vae, t.previews, t.total] {
                    ui.label(format!("{:.2}", d.as_secs_f64()));
                }
                ui.label(if t.nfe > 0 {
                    format!("{:.3}", t.denoise.as_secs_f64() / f64::from(t.nfe))
                } else {
                    "-".into()
                });
                ui.end_row();
            }
        });
    });
}

fn folder_list(ui: &mut egui::Ui, id: &str, list: &mut Vec<std::path::PathBuf>) -> bool {
    let mut removed = None;
    if list.is_empty() {
        ui.weak("none");
    }
    for (i, d) in list.iter().enumerate() {
        ui.push_id((id, i), |ui| {
            ui.horizontal(|ui| {
                if ui.small_button("✖").on_hover_text("Remove this folder").clicked() {
                    removed = Some(i);
                }
                ui.label(d.display().to_string());
            });
        });
    }
    if let Some(i) = removed {
        list.remove(i);
        return true;
    }
    false
}

fn settings(view: &mut View, ui: &mut egui::Ui) {
    ui.strong("Model folders");
    ui.weak("Checkpoints in these folders fill the picker; A1111 and ComfyUI install folders work as they are.");
    let mut rescan = folder_list(ui, "model-dirs", &mut view.settings.model_dirs);
    if ui.button("Add model folder…").clicked() {
        view.act(Action::Dialog(Dialog::ModelDir));
    }
    ui.separator();
    ui.strong("LoRA folders");
    ui.weak("Searched for <lora:name> prompt tags (with the models/Lora and models/loras folders of the model folders).");
    rescan |= folder_list(ui, "lora-dirs", &mut view.settings.lora_dirs);
    if ui.button("Add LoRA folder…").clicked() {
        view.act(Action::Dialog(Dialog::LoraDir));
    }
    if rescan {
        view.act(Action::Rescan);
    }
    ui.label(format!(
        "Found {} checkpoints and {} LoRAs.",
        view.session.found_models.len(),
        view.session.found_loras.len()
    ));
    ui.separator();
    ui.strong("Output folder");
    ui.horizontal(|ui| {
        ui.label(view.settings.output_dir.display().to_string());
        if ui.button("Change…").clicked() {
            view.act(Action::Dialog(Dialog::OutputDir));
        }
    });
    ui.separator();
    ui.strong("Weights precision");
    let before = view.settings.dtype;
    ui.horizontal(|ui| {
        ui.radio_value(&mut view.settings.dtype, DType::F32, "f32");
        ui.radio_value(&mut view.settings.dtype, DType::F16, "f16");
        ui.radio_value(&mut view.settings.dtype, DType::BF16, "bf16");
    })
    .response
    .on_hover_text("f16/bf16 halve the memory for weights; on CPU the arithmetic stays f32");
    ui.checkbox(
        &mut view.settings.vae_auto_tiling,
        "Decode big images in tiles when memory is short",
    )
    .on_hover_text("Off: always decode whole (exact colours, memory grows with the image). Applies at the next model load.");
    let loaded = match &view.session.model {
        ModelState::Loaded { path, info } => Some((path.clone(), info.dtype)),
        _ => None,
    };
    if let Some((path, dtype)) = loaded {
        if view.settings.dtype != dtype {
            ui.horizontal(|ui| {
                ui.label(format!("{} is loaded as {}.", file_name(&path), dtype.name()));
                if ui.button("Reload now").clicked() {
                    view.act(Action::OpenModel(path.clone()));
                }
            });
        } else if before != view.settings.dtype {
            ui.weak("Applies at the next model load.");
        }
    }
}
