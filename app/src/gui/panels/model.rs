//! Model picker: open, recent, scanned folders, loading state.

use eframe::egui;

use crate::gui::actions::{Action, Dialog, View};
use crate::gui::state::ModelState;
use crate::gui::state::file_name;

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    ui.heading("Model");
    match &view.session.model {
        ModelState::None => {
            ui.label("No model open. Open a .safetensors checkpoint (SD 1.x, 2.x, SDXL) or a diffusers folder, or drop one on the window.");
        }
        ModelState::Loading { path, since, .. } => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("Loading {} … {:.0} s", file_name(path), since.elapsed().as_secs_f32()));
            });
        }
        ModelState::Loaded { info, .. } => {
            ui.label(egui::RichText::new(&info.name).strong()).on_hover_text(&info.summary);
            ui.label(format!("{} · {} · {}", info.family, info.device, info.dtype.name()));
        }
    }
    let mut choice = None;
    let current = match &view.session.model {
        ModelState::Loaded { path, .. } | ModelState::Loading { path, .. } => Some(path.clone()),
        ModelState::None => None,
    };
    let mut options: Vec<std::path::PathBuf> = view.session.found_models.clone();
    for r in &view.settings.recent_models {
        if !options.contains(r) {
            options.push(r.clone());
        }
    }
    ui.horizontal(|ui| {
        let l = ui.label("Checkpoint");
        let label = current.as_deref().map(file_name).unwrap_or_else(|| "choose…".into());
        egui::ComboBox::from_id_salt("model-picker")
            .selected_text(label)
            .width(150.0)
            .show_ui(ui, |ui| {
                if options.is_empty() {
                    ui.label("Add a model folder (File > Add model folder…)");
                }
                for p in &options {
                    if ui
                        .selectable_label(current.as_ref() == Some(p), file_name(p))
                        .on_hover_text(p.display().to_string())
                        .clicked()
                    {
                        choice = Some(p.clone());
                    }
                }
            })
            .response
            .labelled_by(l.id);
        if ui.button("Open…").on_hover_text("Open a .safetensors checkpoint").clicked() {
            view.act(Action::Dialog(Dialog::ModelFile));
        }
    });
    if let Some(p) = choice {
        view.act(Action::OpenPath(p.clone()));
    }
    vae_picker(view, ui, current.as_deref());
}

/// "VAE": the checkpoint's own or a file from the model folders' VAE folders; a change
/// reloads the model with it (the current model keeps serving until then).
fn vae_picker(view: &mut View, ui: &mut egui::Ui, model: Option<&std::path::Path>) {
    let mut options = view.session.found_vaes.clone();
    if let Some(v) = &view.settings.vae
        && !options.contains(v)
    {
        options.push(v.clone());
    }
    let before = view.settings.vae.clone();
    ui.horizontal(|ui| {
        let l = ui.label("VAE");
        let label = view
            .settings
            .vae
            .as_deref()
            .map(file_name)
            .unwrap_or_else(|| "the checkpoint's own".into());
        egui::ComboBox::from_id_salt("vae-picker")
            .selected_text(label)
            .width(150.0)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut view.settings.vae, None, "the checkpoint's own");
                for p in &options {
                    ui.selectable_value(&mut view.settings.vae, Some(p.clone()), file_name(p))
                        .on_hover_text(p.display().to_string());
                }
                if options.is_empty() {
                    ui.weak("VAE files go in a VAE folder of a model folder (models/VAE)");
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text("Decode with another VAE (A1111's models/VAE, ComfyUI's models/vae)");
    });
    if view.settings.vae != before
        && let Some(m) = model
    {
        view.act(Action::OpenModel(m.to_path_buf()));
    }
}
