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
            let quantized = info
                .summary
                .split(", GGUF ")
                .nth(1)
                .map(|q| format!(" · GGUF {q}"))
                .unwrap_or_default();
            ui.label(format!("{} · {} · {}{quantized}", info.family, info.device, info.dtype.name()));
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
                    let note = view.session.model_notes.get(p);
                    let label = match note {
                        Some(n) => format!("{} · {n}", file_name(p)),
                        None => file_name(p),
                    };
                    if ui
                        .selectable_label(current.as_ref() == Some(p), label)
                        .on_hover_text(match std::fs::metadata(p) {
                            Ok(m) if m.is_file() => format!("{} ({:.1} MB)", p.display(), m.len() as f64 / 1e6),
                            _ => p.display().to_string(),
                        })
                        .clicked()
                    {
                        choice = Some(p.clone());
                    }
                }
            })
            .response
            .labelled_by(l.id);
        if ui
            .button("Open…")
            .on_hover_text("Open a .safetensors or .gguf checkpoint")
            .clicked()
        {
            view.act(Action::Dialog(Dialog::ModelFile));
        }
    });
    if let Some(p) = choice {
        view.act(Action::OpenPath(p.clone()));
    }
    vae_picker(view, ui, current.as_deref());
}

/// The VAE and preview-decoder pickers; a change reloads the model with the choice (the
/// current model keeps serving until then).
fn vae_picker(view: &mut View, ui: &mut egui::Ui, model: Option<&std::path::Path>) {
    let found = view.session.found_vaes.clone();
    let vae = file_picker(
        ui,
        ("VAE", "vae-picker"),
        &found,
        &mut view.settings.vae,
        "the checkpoint's own",
        "Decode with another VAE (A1111's models/VAE, ComfyUI's models/vae)",
    );
    let found = view.session.found_tiny_decoders.clone();
    let tiny = file_picker(
        ui,
        ("Previews", "preview-picker"),
        &found,
        &mut view.settings.tiny_decoder,
        "latent projection",
        "Step previews from a tiny decoder (TAESD: A1111's models/VAE-approx, ComfyUI's models/vae_approx): \
         full-size previews for a few milliseconds a step, instead of the free latent projection",
    );
    let found: Vec<std::path::PathBuf> = view
        .session
        .found_models
        .iter()
        .filter(|p| Some(p.as_path()) != model)
        .cloned()
        .collect();
    let components = file_picker(
        ui,
        ("Components", "components-picker"),
        &found,
        &mut view.settings.components,
        "the checkpoint's own",
        "Text encoders and VAE for a UNet-only file (ComfyUI's models/unet, ComfyUI-GGUF's .gguf UNets), \
         taken from a whole checkpoint of the same family; a whole checkpoint keeps its own",
    );
    if (vae || tiny || components)
        && let Some(m) = model
    {
        view.act(Action::OpenModel(m.to_path_buf()));
    }
}

/// A labelled combo of `None` (`none_label`) and the files in `found`; true when it changed.
fn file_picker(
    ui: &mut egui::Ui,
    (label, id): (&str, &str),
    found: &[std::path::PathBuf],
    value: &mut Option<std::path::PathBuf>,
    none_label: &str,
    hover: &str,
) -> bool {
    let mut options = found.to_vec();
    if let Some(v) = value.as_ref()
        && !options.contains(v)
    {
        options.push(v.clone());
    }
    let before = value.clone();
    ui.horizontal(|ui| {
        let l = ui.label(label);
        let shown = value.as_deref().map(file_name).unwrap_or_else(|| none_label.into());
        egui::ComboBox::from_id_salt(id)
            .selected_text(shown)
            .width(150.0)
            .show_ui(ui, |ui| {
                ui.selectable_value(value, None, none_label);
                for p in &options {
                    ui.selectable_value(value, Some(p.clone()), file_name(p))
                        .on_hover_text(match std::fs::metadata(p) {
                            Ok(m) if m.is_file() => format!("{} ({:.1} MB)", p.display(), m.len() as f64 / 1e6),
                            _ => p.display().to_string(),
                        });
                }
                if options.is_empty() {
                    ui.weak("Files go in a folder of a model folder (models/VAE, models/VAE-approx)");
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text(hover);
    });
    *value != before
}
