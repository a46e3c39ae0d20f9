//! The window's panels, one file each. Each `show` gets a [`View`] (the settings and session
//! state it draws) and pushes an [`Action`] for anything that talks to the engine, the file
//! thread or a dialog; the app applies them after the frame.

pub mod canvas;
pub mod connect;
pub mod gallery;
pub mod lab;
pub mod lora;
pub mod mask;
pub mod model;
pub mod path_field;
pub mod prompt;
pub mod sampler;
pub mod status;
pub mod windows;

use eframe::egui;

use crate::gui::actions::{Action, Dialog, View};
use crate::gui::state::{ThemeChoice, file_name};

/// The menu bar.
pub fn top_bar(view: &mut View, ui: &mut egui::Ui) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open model file…").clicked() {
                    view.act(Action::Dialog(Dialog::ModelFile));
                }
                if ui.button("Open diffusers folder…").clicked() {
                    view.act(Action::Dialog(Dialog::ModelFolder));
                }
                ui.menu_button("Recent models", |ui| {
                    let recent = view.settings.recent_models.clone();
                    if recent.is_empty() {
                        ui.label("none yet");
                    }
                    for p in recent {
                        if ui.button(file_name(&p)).on_hover_text(p.display().to_string()).clicked() {
                            view.act(Action::OpenPath(p.clone()));
                        }
                    }
                });
                ui.separator();
                if ui.button("Open image (restore settings)…").clicked() {
                    view.act(Action::Dialog(Dialog::Image));
                }
                if ui.button("Add LoRA…").clicked() {
                    view.act(Action::Dialog(Dialog::Lora));
                }
                ui.separator();
                if ui.button("Add model folder…").clicked() {
                    view.act(Action::Dialog(Dialog::ModelDir));
                }
                if ui.button("Add LoRA folder…").clicked() {
                    view.act(Action::Dialog(Dialog::LoraDir));
                }
                if ui.button("Output folder…").clicked() {
                    view.act(Action::Dialog(Dialog::OutputDir));
                }
                if ui.button("Show output folder").clicked() {
                    let dir = view.settings.output_dir.clone();
                    let _ = std::fs::create_dir_all(&dir);
                    if let Err(e) = crate::gui::files::reveal(&dir) {
                        view.session.say(crate::gui::state::Level::Error, e);
                    }
                }
                if ui.button("Rescan folders").clicked() {
                    view.act(Action::Rescan);
                }
                ui.separator();
                if ui.button("Connect to server…").clicked() {
                    let r = &mut view.session.remote;
                    if r.url.is_empty() {
                        r.url = if view.settings.server_url.is_empty() {
                            "http://127.0.0.1:7860".into()
                        } else {
                            view.settings.server_url.clone()
                        };
                    }
                    r.show = true;
                }
                if view.session.remote.connected.is_some() && ui.button("Disconnect from server").clicked() {
                    view.act(Action::Disconnect);
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("View", |ui| {
                ui.checkbox(&mut view.session.show_timing_log, "Timing log");
                ui.checkbox(&mut view.session.show_settings, "Folders and model options");
                ui.checkbox(&mut view.session.lab.show, "Solver lab");
                ui.separator();
                let before = view.settings.theme;
                ui.radio_value(&mut view.settings.theme, ThemeChoice::System, "System theme");
                ui.radio_value(&mut view.settings.theme, ThemeChoice::Light, "Light");
                ui.radio_value(&mut view.settings.theme, ThemeChoice::Dark, "Dark");
                if view.settings.theme != before {
                    view.act(Action::ApplyTheme);
                }
                ui.separator();
                ui.checkbox(&mut view.settings.sharp_pixels, "Sharp pixels when magnified")
                    .on_hover_text("Nearest-neighbour zoom for small images (applies to images made or opened from now on)");
            });
            ui.menu_button("Help", |ui| {
                ui.label(format!("Latent Studio {}", env!("CARGO_PKG_VERSION")));
                ui.label("Ctrl+Enter: generate · Esc: cancel");
                ui.label("Drop a .safetensors model or LoRA, or a PNG to restore its settings.");
            });
        });
    });
}
