//! Solver, schedule, steps, guidance, size and seed, with the NFE they will cost.

use eframe::egui;
use latent_engine::pipeline::{MAX_FEATURE_CACHE, request_nfe, request_whole_nfe};
use latent_engine::sampling::SOLVERS;
use latent_engine::sampling::schedule::SCHEDULES;

use crate::gui::actions::View;
use crate::gui::state::random_seed;
use crate::gui::state::{ModelState, SeedMode};

/// Sizes each family was trained around (width, height); small models (the embedded 64x64
/// one) get multiples of their own size.
fn presets(family: &str, native: (u32, u32)) -> Vec<(u32, u32)> {
    if native.0 < 256 {
        let (w, h) = native;
        let r8 = |v: u32| v.div_ceil(8) * 8;
        return vec![
            (w, h),
            (r8(w * 3 / 2), r8(h * 3 / 2)),
            (2 * w, 2 * h),
            (w, r8(h * 3 / 2)),
            (r8(w * 3 / 2), h),
        ];
    }
    let list: &[(u32, u32)] = match family {
        "SDXL" => &[
            (1024, 1024),
            (896, 1152),
            (1152, 896),
            (832, 1216),
            (1216, 832),
            (768, 1344),
            (1344, 768),
        ],
        "SD 2.x" => &[(768, 768), (512, 512), (576, 768), (768, 576), (640, 896), (896, 640)],
        _ => &[(512, 512), (512, 768), (768, 512), (448, 640), (640, 448), (384, 384)],
    };
    list.to_vec()
}

/// What a typed slider value may be: a finite number (`nan`, `inf` and words are refused, so
/// the slider keeps its value, as the CLI refuses them).
fn finite(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

pub fn show(view: &mut View, ui: &mut egui::Ui) {
    ui.heading("Sampler");
    let p = &mut view.settings.params;
    egui::Grid::new("sampler-grid").num_columns(2).spacing([8.0, 6.0]).show(ui, |ui| {
        let l = ui.label("Solver");
        let shown = SOLVERS
            .iter()
            .find(|s| s.name == p.solver)
            .map(|s| s.a1111)
            .unwrap_or(p.solver.as_str());
        egui::ComboBox::from_id_salt("solver")
            .selected_text(shown)
            .width(170.0)
            .show_ui(ui, |ui| {
                for s in SOLVERS {
                    let text = format!("{}  (order {}{})", s.a1111, s.order, if s.stochastic { ", stochastic" } else { "" });
                    ui.selectable_value(&mut p.solver, s.name.to_string(), text)
                        .on_hover_text(s.reference);
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();

        let l = ui.label("Schedule");
        egui::ComboBox::from_id_salt("schedule")
            .selected_text(p.schedule.clone())
            .width(170.0)
            .show_ui(ui, |ui| {
                for (name, about) in SCHEDULES {
                    ui.selectable_value(&mut p.schedule, name.to_string(), *name).on_hover_text(*about);
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();

        let l = ui.label("Steps");
        ui.add_enabled(p.nfe_budget.is_none(), egui::Slider::new(&mut p.steps, 1..=150).logarithmic(true))
            .labelled_by(l.id)
            .on_disabled_hover_text("Set by the NFE budget");
        ui.end_row();

        let l = ui.label("NFE budget");
        ui.horizontal(|ui| {
            let mut on = p.nfe_budget.is_some();
            if ui
                .checkbox(&mut on, "")
                .labelled_by(l.id)
                .on_hover_text(
                    "Spend a number of network evaluations instead of a step count: the steps become the most \
                     the solver can take within it (Heun and DPM2 cost 2 a step, CFG doubles every one), so \
                     solvers compare at equal cost",
                )
                .changed()
            {
                p.nfe_budget = on.then_some(p.nfe_budget.unwrap_or(2 * p.steps));
            }
            if let Some(b) = p.nfe_budget.as_mut() {
                ui.add(egui::DragValue::new(b).range(1..=2000).suffix(" NFE"));
            }
        });
        ui.end_row();

        let l = ui.label("CFG scale");
        ui.add(egui::Slider::new(&mut p.cfg_scale, 1.0..=30.0).step_by(0.5).custom_parser(finite))
            .labelled_by(l.id)
            .on_hover_text("Classifier-free guidance; 1 skips the unconditional pass (half the NFE)");
        ui.end_row();

        let l = ui.label("CFG rescale");
        ui.add(egui::Slider::new(&mut p.cfg_rescale, 0.0..=1.0).step_by(0.05).custom_parser(finite))
            .labelled_by(l.id)
            .on_hover_text("Guidance rescale (Lin et al. 2023): tames over-saturation at high CFG; 0.7 is typical");
        ui.end_row();

        let l = ui.label("Feature cache");
        ui.add(egui::Slider::new(&mut p.feature_cache, 1..=MAX_FEATURE_CACHE.min(10)))
            .labelled_by(l.id)
            .on_hover_text(
                "DeepCache: run the whole UNet every N steps and only its top level in between, \
                 reusing the deeper features. 1 = off; 2-3 keeps the image close, higher is faster and rougher",
            );
        ui.end_row();

        let l = ui.label("Token merging");
        ui.add(
            egui::Slider::new(&mut p.token_merge, 0.0..=0.75)
                .step_by(0.05)
                .fixed_decimals(2)
                .custom_parser(finite),
        )
        .labelled_by(l.id)
        .on_hover_text(
            "ToMe for SD: merge this share of the most similar tokens before each self-attention \
                 at the top level (A1111's token merging ratio). 0 = off; 0.3-0.5 speeds up large images",
        );
        ui.end_row();

        if p.mode == crate::gui::state::GenMode::Text {
            let l = ui.label("Hires fix");
            ui.checkbox(&mut p.hires, "upscale and refine").labelled_by(l.id).on_hover_text(
                "A1111's hires fix: make the image, enlarge its latents, run a second image-to-image pass at the larger size",
            );
            ui.end_row();
            if p.hires {
                let l = ui.label("Upscale by");
                ui.add(
                    egui::Slider::new(&mut p.hires_scale, 1.25..=4.0)
                        .step_by(0.25)
                        .custom_parser(finite),
                )
                .labelled_by(l.id);
                ui.end_row();
                let l = ui.label("Hires steps");
                ui.add(egui::Slider::new(&mut p.hires_steps, 0..=150))
                    .labelled_by(l.id)
                    .on_hover_text("0 = as many as the first pass");
                ui.end_row();
                let l = ui.label("Hires denoise");
                ui.add(
                    egui::Slider::new(&mut p.hires_strength, 0.0..=1.0)
                        .fixed_decimals(2)
                        .custom_parser(finite),
                )
                .labelled_by(l.id)
                .on_hover_text("Denoising strength of the second pass");
                ui.end_row();
                let l = ui.label("Upscaler");
                let chosen = latent_engine::protocol::Hires {
                    scale: p.hires_scale,
                    steps: p.hires_steps,
                    strength: p.hires_strength,
                    upscaler: p.hires_upscaler,
                    model: p.hires_model.clone(),
                };
                egui::ComboBox::from_id_salt("hires-upscaler")
                    .selected_text(chosen.upscaler_name())
                    .show_ui(ui, |ui| {
                        for u in latent_engine::protocol::HiresUpscaler::ALL {
                            if ui.selectable_label(p.hires_upscaler == u, u.name()).clicked() {
                                (p.hires_upscaler, p.hires_model) = (u, None);
                            }
                        }
                        // Upscaler models found in the model folders (models/ESRGAN, ...).
                        for f in &view.session.found_upscalers {
                            let on = p.hires_upscaler == latent_engine::protocol::HiresUpscaler::Model && p.hires_model.as_ref() == Some(f);
                            let name = f.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                            if ui.selectable_label(on, name).on_hover_text(f.display().to_string()).clicked() {
                                (p.hires_upscaler, p.hires_model) = (latent_engine::protocol::HiresUpscaler::Model, Some(f.clone()));
                            }
                        }
                    })
                    .response
                    .labelled_by(l.id)
                    .on_hover_text(
                        "Latent upscalers enlarge the latents; Lanczos and upscaler models (put ESRGAN .safetensors files in models/ESRGAN) enlarge the decoded picture",
                    );
                ui.end_row();
            }
        }

        let l = ui.label("Emphasis");
        egui::ComboBox::from_id_salt("emphasis")
            .selected_text(p.emphasis.name())
            .show_ui(ui, |ui| {
                for e in latent_engine::protocol::Emphasis::ALL {
                    ui.selectable_value(&mut p.emphasis, e, e.name()).on_hover_text(emphasis_help(e));
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text("How (word:1.2) weights act on the text encoding (A1111's Emphasis setting)");
        ui.end_row();

        let l = ui.label("Width");
        ui.add(egui::Slider::new(&mut p.width, 64..=2048).step_by(8.0)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("Height");
        ui.add(egui::Slider::new(&mut p.height, 64..=2048).step_by(8.0)).labelled_by(l.id);
        ui.end_row();
    });
    let (family, native) = match &view.session.model {
        ModelState::Loaded { info, .. } => (info.family.clone(), info.default_size),
        _ => (String::new(), (512, 512)),
    };
    ui.horizontal_wrapped(|ui| {
        for (w, h) in presets(&family, native) {
            if ui.selectable_label(p.width == w && p.height == h, format!("{w}×{h}")).clicked() {
                p.width = w;
                p.height = h;
            }
        }
        if ui.button("Swap").on_hover_text("Swap width and height").clicked() {
            std::mem::swap(&mut p.width, &mut p.height);
        }
    });
    ui.horizontal(|ui| {
        let l = ui.label("Seed");
        ui.add_enabled(
            p.seed_mode == SeedMode::Fixed,
            egui::DragValue::new(&mut p.seed).range(0..=u32::MAX as u64),
        )
        .labelled_by(l.id);
        let mut random = p.seed_mode == SeedMode::Random;
        if ui
            .checkbox(&mut random, "random")
            .on_hover_text("A new seed for every image")
            .changed()
        {
            p.seed_mode = if random { SeedMode::Random } else { SeedMode::Fixed };
        }
        if ui.button("🎲").on_hover_text("New seed now").clicked() {
            p.seed = random_seed();
            p.seed_mode = SeedMode::Fixed;
        }
        if ui
            .add_enabled(view.session.last_seed.is_some(), egui::Button::new("♻"))
            .on_hover_text("Reuse the last image's seed")
            .clicked()
            && let Some(s) = view.session.last_seed
        {
            p.seed = s;
            p.seed_mode = SeedMode::Fixed;
        }
    });
    let mut request = p.request(p.seed);
    if p.mode == crate::gui::state::GenMode::Image {
        // Only its presence counts for the cost (image to image runs int(steps x strength)).
        request.init_image = Some(std::sync::Arc::new(latent_engine::protocol::ImageRgb8 {
            width: 0,
            height: 0,
            pixels: vec![],
        }));
    }
    if let Err(why) = p.apply_budget(&mut request) {
        ui.colored_label(ui.visuals().warn_fg_color, why);
        return;
    }
    let nfe = request_nfe(&request);
    let whole = request_whole_nfe(&request);
    let budget = p
        .nfe_budget
        .map(|b| format!("Budget {b}: {} steps · ", request.steps))
        .unwrap_or_default();
    ui.label(match (nfe, whole) {
        (Some(n), Some(w)) => format!(
            "{budget}Cost: {n} network evaluations{}{}",
            if w < n { format!(", {w} of them whole") } else { String::new() },
            if p.batch > 1 { format!(" × {}", p.batch) } else { String::new() }
        ),
        _ => "Cost: unknown solver".to_string(),
    })
    .on_hover_text(
        "NFE: UNet passes, CFG's two passes counted. Time per image is about NFE × one pass; \
         with the feature cache the passes that are not whole run only the UNet's top level.",
    );
}

fn emphasis_help(e: latent_engine::protocol::Emphasis) -> &'static str {
    use latent_engine::protocol::Emphasis;
    match e {
        Emphasis::Original => "A1111's default: tokens scaled by their weight, then the encoding restored to its mean",
        Emphasis::NoNorm => "A1111's No norm: tokens scaled by their weight, no rescaling",
        Emphasis::Comfy => "ComfyUI's: a weighted token moves away from the empty prompt's encoding",
        Emphasis::Ignore => "Brackets and BREAK are read, the weights are not used",
        Emphasis::None => "No syntax: brackets are plain text",
    }
}
