//! The mask editor: the init picture with the mask over it in red; drag to paint (or erase)
//! with a round brush. Everything happens in the window, no engine call per stroke.

use eframe::egui;

use crate::gui::actions::View;

/// Largest side the picture is shown at.
const SIDE: f32 = 448.0;

pub fn window(view: &mut View, ctx: &egui::Context) {
    let mut open = view.session.show_mask_editor;
    if !open {
        return;
    }
    egui::Window::new("Mask")
        .open(&mut open)
        .resizable(false)
        .show(ctx, |ui| editor(view, ui));
    view.session.show_mask_editor = open;
}

fn editor(view: &mut View, ui: &mut egui::Ui) {
    let brush = &mut view.session.brush;
    ui.horizontal(|ui| {
        let l = ui.label("Brush");
        ui.add(egui::Slider::new(&mut brush.radius, 1.0..=128.0).logarithmic(true).suffix(" px"))
            .labelled_by(l.id);
        ui.checkbox(&mut brush.erase, "Erase");
    });
    let Some(init) = view.session.init.as_mut() else {
        ui.weak("Open a picture first.");
        return;
    };
    ui.horizontal(|ui| {
        if ui.button("Invert").clicked() {
            for m in &mut init.mask {
                *m = 255 - *m;
            }
            init.mask_changed = true;
        }
        if ui.button("Clear").clicked() {
            init.mask.iter_mut().for_each(|m| *m = 0);
            init.mask_changed = true;
        }
        ui.weak(format!("{:.0}% to repaint", init.painted() * 100.0));
    });
    let (w, h) = (init.image.width as f32, init.image.height as f32);
    let scale = SIDE / w.max(h).max(1.0);
    let size = egui::vec2(w * scale, h * scale);
    let (rect, response) = ui.allocate_exact_size(size, egui::Sense::drag());
    let picture = init.texture.get_or_insert_with(|| {
        let img = &init.image;
        let color = egui::ColorImage::from_rgb([img.width as usize, img.height as usize], &img.pixels);
        ui.ctx().load_texture("init-image", color, egui::TextureOptions::LINEAR)
    });
    let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
    ui.painter().image(picture.id(), rect, uv, egui::Color32::WHITE);
    // Paint: every frame the pointer is down on the picture, a dab, joined to the last one.
    if let Some(pos) = response.interact_pointer_pos().filter(|_| response.is_pointer_button_down_on()) {
        let p = ((pos.x - rect.min.x) / scale, (pos.y - rect.min.y) / scale);
        let r = brush.radius;
        let from = brush.last.unwrap_or(p);
        let steps = ((p.0 - from.0).hypot(p.1 - from.1) / (r * 0.5).max(0.5)).ceil().max(1.0) as usize;
        for k in 0..=steps {
            let t = k as f32 / steps as f32;
            init.stamp(from.0 + (p.0 - from.0) * t, from.1 + (p.1 - from.1) * t, r, brush.erase);
        }
        brush.last = Some(p);
    } else {
        brush.last = None;
    }
    if init.mask_changed || init.mask_texture.is_none() {
        let pixels: Vec<egui::Color32> = init
            .mask
            .iter()
            .map(|&m| {
                if m > 0 {
                    egui::Color32::from_rgba_unmultiplied(255, 40, 40, 140)
                } else {
                    egui::Color32::TRANSPARENT
                }
            })
            .collect();
        let image = egui::ColorImage::new([init.image.width as usize, init.image.height as usize], pixels);
        match &mut init.mask_texture {
            Some(t) => t.set(image, egui::TextureOptions::NEAREST),
            None => init.mask_texture = Some(ui.ctx().load_texture("mask", image, egui::TextureOptions::NEAREST)),
        }
        init.mask_changed = false;
        init.region = None;
    }
    if let Some(t) = &init.mask_texture {
        ui.painter().image(t.id(), rect, uv, egui::Color32::WHITE);
    }
    // "Only masked": the region the engine will cut out, found once the stroke ends.
    let p = &view.settings.params;
    if p.inpaint_area == latent_engine::protocol::InpaintArea::Masked && !response.is_pointer_button_down_on() {
        let key = [p.mask_blur, p.masked_padding, p.width, p.height];
        if init.region.as_ref().is_none_or(|(k, _)| *k != key) {
            let found = latent_engine::pipeline::masked_area::region_of_mask(&init.mask_image(), key[0], key[1], key[2], key[3]);
            init.region = Some((key, found));
        }
        if let Some((_, Some(r))) = &init.region {
            let at = |x: u32, y: u32| rect.min + egui::vec2(x as f32 * scale, y as f32 * scale);
            let area = egui::Rect::from_min_max(at(r.x0, r.y0), at(r.x1, r.y1));
            ui.painter().rect_stroke(
                area,
                0.0,
                egui::Stroke::new(1.5, egui::Color32::from_rgb(255, 220, 60)),
                egui::StrokeKind::Inside,
            );
            ui.weak(format!(
                "Only masked: {}x{} pixels at {}x{} are repainted (yellow box)",
                r.width(),
                r.height(),
                r.x0,
                r.y0
            ));
        }
    }
    if let Some(pos) = response.hover_pos() {
        ui.painter()
            .circle_stroke(pos, brush.radius * scale, egui::Stroke::new(1.0, egui::Color32::WHITE));
    }
}
