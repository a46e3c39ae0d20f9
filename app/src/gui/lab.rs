//! View > Solver lab: the window's side of the engine's `Compare` job. The prompt, seed,
//! size, guidance and schedule come from the main panels; the lab picks solvers, NFE
//! budgets and the reference run, and shows the cells as they arrive.

use eframe::egui;
use latent_engine::protocol::{CompareRequest, Event};

use super::app::{StudioApp, to_color_image};
use super::state::{Level, ModelState};

impl StudioApp {
    /// Sends the lab's comparison to the engine.
    pub fn compare(&mut self) {
        if !matches!(self.session.model, ModelState::Loaded { .. }) {
            self.session.lab.error = Some("Open a model first.".into());
            return;
        }
        let lab = &mut self.session.lab;
        let budgets = match lab.parsed_budgets() {
            Ok(b) => b,
            Err(e) => {
                lab.error = Some(e);
                return;
            }
        };
        if lab.solvers.is_empty() {
            lab.error = Some("Tick at least one solver.".into());
            return;
        }
        let p = &self.settings.params;
        let request = CompareRequest {
            base: p.request(p.seed),
            solvers: lab.solvers.clone(),
            budgets: budgets.clone(),
            reference_solver: lab.reference_solver.clone(),
            reference_steps: lab.reference_steps,
        };
        match self.engine.compare(request.clone()) {
            Ok(id) => {
                lab.job = Some(id);
                lab.done = None;
                lab.sent = Some(request);
                lab.error = None;
                lab.cells.clear();
                lab.reference = None;
                lab.progress = (0, 0);
                lab.shown = (lab.solvers.clone(), budgets);
            }
            Err(e) => lab.error = Some(e.to_string()),
        }
    }

    /// Writes the finished comparison into a new folder of the output folder (file thread).
    pub fn save_lab(&mut self) {
        let lab = &self.session.lab;
        let Some((request, image, metadata)) = lab.done.clone() else {
            self.session.say(Level::Warning, "Run a comparison first.");
            return;
        };
        let job = super::files::FileJob::SaveLab {
            dir: self.settings.output_dir.clone(),
            request: Box::new(request),
            cells: lab.cells.iter().map(|(c, _)| c.clone()).collect(),
            reference: (image, metadata),
        };
        if let Err(e) = self.files.send(job) {
            self.session.say(Level::Error, format!("Cannot save the solver lab: {e}"));
        }
    }

    pub(super) fn on_lab_event(&mut self, ctx: &egui::Context, e: Event) {
        let filter = self.settings.canvas_filter();
        let lab = &mut self.session.lab;
        match e {
            Event::Started { total_steps, .. } => lab.progress = (0, total_steps),
            Event::Progress { step, total_steps, .. } => lab.progress = (step, total_steps),
            Event::CompareCell { id, cell } => {
                let tex = cell
                    .image
                    .as_ref()
                    .map(|img| ctx.load_texture(format!("lab-{id}-{}-{}", cell.solver, cell.budget), to_color_image(img), filter));
                lab.cells.push((*cell, tex));
            }
            Event::Finished {
                id,
                image,
                metadata,
                timings,
                ..
            } => {
                lab.reference = Some(ctx.load_texture(format!("lab-{id}-reference"), to_color_image(&image), filter));
                lab.job = None;
                lab.done = lab.sent.take().map(|r| (r, std::sync::Arc::new(image), metadata));
                let n = lab.cells.len();
                self.session.say(
                    Level::Info,
                    format!(
                        "Solver lab: {n} cells and the reference, {} NFE in {:.1} s",
                        timings.nfe,
                        timings.total.as_secs_f64()
                    ),
                );
            }
            Event::Cancelled { .. } => {
                lab.job = None;
                lab.error = Some("Stopped.".into());
            }
            Event::Failed { error, .. } => {
                lab.job = None;
                lab.error = Some(error);
            }
            Event::Warning { message, .. } => self.session.say(Level::Warning, message),
            _ => {}
        }
    }
}
