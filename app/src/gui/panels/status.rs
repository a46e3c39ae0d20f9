//! The status bar: renderer, device and dtype, family, memory, last image's time and NFE.

use eframe::egui;

use crate::gui::actions::View;
use crate::gui::state::ModelState;

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    let ram = view.session.ram;
    egui::Panel::bottom("status").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("Renderer: {}", view.session.renderer));
            ui.separator();
            match &view.session.model {
                ModelState::Loaded { info, .. } => {
                    ui.label(format!("{} · {} · {}", info.device, info.dtype.name(), info.family));
                }
                ModelState::Loading { .. } => {
                    ui.label("loading…");
                }
                ModelState::None => {
                    ui.label("no model");
                }
            }
            if let Some(r) = ram {
                ui.separator();
                ui.label(format!("RAM {:.2} GiB", r as f64 / (1u64 << 30) as f64));
            }
            if let Some(t) = &view.session.last {
                ui.separator();
                ui.label(if t.shallow_nfe > 0 {
                    format!(
                        "Last image: {:.2} s · {} NFE ({} shallow)",
                        t.total.as_secs_f64(),
                        t.nfe,
                        t.shallow_nfe
                    )
                } else {
                    format!("Last image: {:.2} s · {} NFE", t.total.as_secs_f64(), t.nfe)
                })
                .on_hover_text(format!(
                    "text {:.2} s · denoise {:.2} s · VAE {:.2} s · previews {:.2} s",
                    t.text.as_secs_f64(),
                    t.denoise.as_secs_f64(),
                    t.vae.as_secs_f64(),
                    t.previews.as_secs_f64()
                ));
            }
        });
    });
}
