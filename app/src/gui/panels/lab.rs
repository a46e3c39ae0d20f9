//! The Solver lab window: solvers at equal cost, each cell's distance to a long reference
//! run, and the convergence plot.

use eframe::egui;
use latent_engine::sampling::SOLVERS;

use crate::gui::actions::{Action, View};

pub fn window(view: &mut View, ctx: &egui::Context) {
    let mut open = view.session.lab.show;
    egui::Window::new("Solver lab")
        .open(&mut open)
        .default_width(760.0)
        .show(ctx, |ui| body(view, ui));
    view.session.lab.show = open;
}

const COLOURS: [egui::Color32; 8] = [
    egui::Color32::from_rgb(31, 119, 180),
    egui::Color32::from_rgb(255, 127, 14),
    egui::Color32::from_rgb(44, 160, 44),
    egui::Color32::from_rgb(214, 39, 40),
    egui::Color32::from_rgb(148, 103, 189),
    egui::Color32::from_rgb(140, 86, 75),
    egui::Color32::from_rgb(227, 119, 194),
    egui::Color32::from_rgb(127, 127, 127),
];

fn body(view: &mut View, ui: &mut egui::Ui) {
    ui.weak(
        "Solvers side by side at equal cost: each cell spends the same number of network evaluations (NFE, CFG's \
         two passes counted) on the main panels' prompt, seed, size, CFG and schedule, and is measured against a \
         long reference run of the same seed.",
    );
    let running = view.session.lab.job.is_some();
    let lab = &mut view.session.lab;
    ui.collapsing("Solvers", |ui| {
        egui::Grid::new("lab-solvers").num_columns(5).show(ui, |ui| {
            for (i, s) in SOLVERS.iter().enumerate() {
                let mut on = lab.solvers.iter().any(|x| x == s.name);
                if ui
                    .checkbox(&mut on, s.name)
                    .on_hover_text(format!("{} · order {} · {} NFE per step", s.a1111, s.order, s.evals_per_step))
                    .changed()
                {
                    if on {
                        lab.solvers.push(s.name.to_string());
                        // Keep the list's order.
                        lab.solvers.sort_by_key(|n| SOLVERS.iter().position(|x| x.name == n));
                    } else {
                        lab.solvers.retain(|x| x != s.name);
                    }
                }
                if i % 5 == 4 {
                    ui.end_row();
                }
            }
        });
    });
    ui.horizontal(|ui| {
        let l = ui.label("NFE budgets");
        ui.add(egui::TextEdit::singleline(&mut lab.budgets).desired_width(120.0))
            .labelled_by(l.id);
        let l = ui.label("Reference");
        egui::ComboBox::from_id_salt("lab-reference")
            .selected_text(lab.reference_solver.clone())
            .show_ui(ui, |ui| {
                for s in SOLVERS.iter().filter(|s| !s.stochastic) {
                    ui.selectable_value(&mut lab.reference_solver, s.name.to_string(), s.name);
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text("The long run every cell is measured against (same prompt and seed)");
        ui.add(egui::DragValue::new(&mut lab.reference_steps).range(10..=1000).suffix(" steps"))
            .labelled_by(l.id);
    });
    ui.horizontal(|ui| {
        if running {
            if ui.button("Stop").clicked() {
                view.act(Action::CancelCompare);
            }
            let (done, total) = view.session.lab.progress;
            ui.add(
                egui::ProgressBar::new(if total > 0 { done as f32 / total as f32 } else { 0.0 })
                    .desired_width(260.0)
                    .text(format!("{done}/{total} steps")),
            );
        } else {
            if ui.button("Compare").clicked() {
                view.act(Action::Compare);
            }
            if ui
                .add_enabled(view.session.lab.done.is_some(), egui::Button::new("Save"))
                .on_hover_text("Grid, every cell's PNG, a CSV and the convergence plot, in a new folder of the output folder")
                .clicked()
            {
                view.act(Action::SaveLab);
            }
        }
        if let Some(e) = &view.session.lab.error {
            ui.colored_label(ui.visuals().warn_fg_color, e);
        }
    });
    let lab = &view.session.lab;
    if lab.cells.is_empty() {
        return;
    }
    ui.separator();
    let (solvers, budgets) = &lab.shown;
    egui::ScrollArea::both().max_height(420.0).show(ui, |ui| {
        egui::Grid::new("lab-grid")
            .num_columns(budgets.len() + 1)
            .spacing([8.0, 8.0])
            .show(ui, |ui| {
                ui.label("");
                for b in budgets {
                    ui.strong(format!("{b} NFE"));
                }
                ui.end_row();
                for s in solvers {
                    ui.label(s);
                    for b in budgets {
                        match lab.cells.iter().find(|(c, _)| &c.solver == s && c.budget == *b) {
                            Some((c, tex)) => {
                                ui.vertical(|ui| {
                                    match tex {
                                        Some(t) => {
                                            ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(96.0, 96.0)))
                                                .on_hover_text(&c.metadata);
                                        }
                                        None => {
                                            ui.weak("no step fits");
                                        }
                                    }
                                    if c.steps > 0 {
                                        ui.small(format!("{} steps · {} NFE · {:.2} s", c.steps, c.nfe, c.time.as_secs_f64()));
                                        ui.small(format!("rel L2 {:.4} · {:.1} dB", c.latent_rel_l2, c.psnr.min(99.9)));
                                    }
                                });
                            }
                            None => {
                                ui.spinner();
                            }
                        }
                    }
                    ui.end_row();
                }
            });
    });
    ui.separator();
    plot(ui, lab);
}

/// Distance to the reference against NFE spent, log-log, one line per solver.
fn plot(ui: &mut egui::Ui, lab: &crate::gui::state::LabState) {
    let points: Vec<(usize, f64, f64)> = lab
        .shown
        .0
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            lab.cells
                .iter()
                .filter(move |(c, _)| &c.solver == s && c.steps > 0 && c.latent_rel_l2.is_finite())
                .map(move |(c, _)| (i, f64::from(c.nfe).log10(), c.latent_rel_l2.max(1e-6).log10()))
        })
        .collect();
    if points.is_empty() {
        return;
    }
    let (x0, x1) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let (y0, y1) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.2), a.1.max(p.2)));
    let (x0, x1, y0, y1) = (
        x0.floor(),
        x1.ceil().max(x0.floor() + 1.0),
        y0.floor(),
        y1.ceil().max(y0.floor() + 1.0),
    );
    ui.label("Latent distance to the reference (relative L2, log) against NFE (log)");
    let (rect, _) = ui.allocate_exact_size(egui::vec2(520.0, 220.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    let inner = rect.shrink2(egui::vec2(40.0, 16.0));
    let to = |x: f64, y: f64| {
        egui::pos2(
            inner.left() + ((x - x0) / (x1 - x0)) as f32 * inner.width(),
            inner.bottom() - ((y - y0) / (y1 - y0)) as f32 * inner.height(),
        )
    };
    let grid = ui.visuals().widgets.noninteractive.bg_stroke;
    let text = ui.visuals().text_color();
    for d in x0 as i32..=x1 as i32 {
        let p = to(f64::from(d), y0);
        painter.line_segment([p, to(f64::from(d), y1)], grid);
        painter.text(
            p + egui::vec2(0.0, 2.0),
            egui::Align2::CENTER_TOP,
            format!("{}", 10f64.powi(d)),
            egui::FontId::proportional(10.0),
            text,
        );
    }
    for d in y0 as i32..=y1 as i32 {
        let p = to(x0, f64::from(d));
        painter.line_segment([p, to(x1, f64::from(d))], grid);
        painter.text(
            p - egui::vec2(4.0, 0.0),
            egui::Align2::RIGHT_CENTER,
            format!("1e{d}"),
            egui::FontId::proportional(10.0),
            text,
        );
    }
    for (i, name) in lab.shown.0.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<egui::Pos2> = points.iter().filter(|p| p.0 == i).map(|p| to(p.1, p.2)).collect();
        if line.len() > 1 {
            painter.add(egui::Shape::line(line.clone(), egui::Stroke::new(2.0, colour)));
        }
        for p in &line {
            painter.circle_filled(*p, 3.0, colour);
        }
        painter.text(
            egui::pos2(inner.right() - 70.0, inner.top() + 12.0 * i as f32),
            egui::Align2::LEFT_TOP,
            name,
            egui::FontId::proportional(11.0),
            colour,
        );
    }
}
