//! The window's panels, one file each. Each `show` draws its part and calls [`StudioApp`]
//! methods for anything that talks to the engine.

pub mod canvas;
pub mod gallery;
pub mod lora;
pub mod model;
pub mod prompt;
pub mod sampler;
pub mod status;
pub mod windows;

use eframe::egui;

use crate::app::{Dialog, StudioApp};
use crate::state::ThemeChoice;

/// The menu bar.
pub fn top_bar(app: &mut StudioApp, ui: &mut egui::Ui) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open model file…").clicked() {
                    app.dialog(Dialog::ModelFile);
                }
                if ui.button("Open diffusers folder…").clicked() {
                    app.dialog(Dialog::ModelFolder);
                }
                ui.menu_button("Recent models", |ui| {
                    let recent = app.settings.recent_models.clone();
                    if recent.is_empty() {
                        ui.label("none yet");
                    }
                    for p in recent {
                        if ui
                            .button(crate::app::file_name(&p))
                            .on_hover_text(p.display().to_string())
                            .clicked()
                        {
                            app.open_path(&p);
                        }
                    }
                });
                ui.separator();
                if ui.button("Open image (restore settings)…").clicked() {
                    app.dialog(Dialog::Image);
                }
                if ui.button("Add LoRA…").clicked() {
                    app.dialog(Dialog::Lora);
                }
                ui.separator();
                if ui.button("Add model folder…").clicked() {
                    app.dialog(Dialog::ModelDir);
                }
                if ui.button("Add LoRA folder…").clicked() {
                    app.dialog(Dialog::LoraDir);
                }
                if ui.button("Output folder…").clicked() {
                    app.dialog(Dialog::OutputDir);
                }
                if ui.button("Show output folder").clicked() {
                    let dir = app.settings.output_dir.clone();
                    let _ = std::fs::create_dir_all(&dir);
                    if let Err(e) = crate::files::reveal(&dir) {
                        app.session.say(crate::state::Level::Error, e);
                    }
                }
                if ui.button("Rescan folders").clicked() {
                    app.rescan();
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("View", |ui| {
                ui.checkbox(&mut app.session.show_timing_log, "Timing log");
                ui.checkbox(&mut app.session.show_settings, "Folders and model options");
                ui.separator();
                let before = app.settings.theme;
                ui.radio_value(&mut app.settings.theme, ThemeChoice::System, "System theme");
                ui.radio_value(&mut app.settings.theme, ThemeChoice::Light, "Light");
                ui.radio_value(&mut app.settings.theme, ThemeChoice::Dark, "Dark");
                if app.settings.theme != before {
                    app.apply_theme(ui.ctx());
                }
            });
            ui.menu_button("Help", |ui| {
                ui.label(format!("Latent Studio {}", env!("CARGO_PKG_VERSION")));
                ui.label("Ctrl+Enter: generate · Esc: cancel");
                ui.label("Drop a .safetensors model or LoRA, or a PNG to restore its settings.");
            });
        });
    });
}
