//! The Connect to server window (File > Connect to server…).

use eframe::egui;

use crate::gui::actions::{Action, View};

pub fn window(view: &mut View, ctx: &egui::Context) {
    let mut open = view.session.remote.show;
    egui::Window::new("Connect to server")
        .open(&mut open)
        .default_width(420.0)
        .collapsible(false)
        .show(ctx, |ui| body(view, ui));
    view.session.remote.show &= open;
}

fn body(view: &mut View, ui: &mut egui::Ui) {
    ui.weak("Make the images on another machine running `latent-studio serve`: the panels, previews and history stay here.");
    let r = &mut view.session.remote;
    egui::Grid::new("connect-grid").num_columns(2).show(ui, |ui| {
        let l = ui.label("Address");
        ui.add(
            egui::TextEdit::singleline(&mut r.url)
                .hint_text("http://gpu-box:7860")
                .desired_width(280.0),
        )
        .labelled_by(l.id)
        .on_hover_text("http://host:port of the server; http://user:password@host:port for --api-auth");
        ui.end_row();
        let l = ui.label("Token");
        ui.add(
            egui::TextEdit::singleline(&mut r.token)
                .password(true)
                .hint_text("for --token-file servers")
                .desired_width(280.0),
        )
        .labelled_by(l.id);
        ui.end_row();
    });
    if let Some(e) = &r.error {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    let pending = r.pending.is_some();
    let connected = r.connected.as_ref().map(|(s, _)| s.url());
    ui.horizontal(|ui| {
        if pending {
            ui.spinner();
            ui.label("connecting…");
        } else if ui.button("Connect").clicked() {
            view.act(Action::Connect);
        }
        if let Some(url) = &connected {
            if ui.button("Disconnect").clicked() {
                view.act(Action::Disconnect);
            }
            ui.weak(format!("now on {url}"));
        }
    });
}
