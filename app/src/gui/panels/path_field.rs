//! The path field: a small window standing in for a file dialog that could not open (no
//! desktop portal answering, or dialogs off). Type or complete a path, Enter opens it.

use eframe::egui;

use crate::gui::actions::{Action, View};

/// How many completions are listed under the field.
const SHOWN: usize = 12;

pub fn show(view: &mut View, ctx: &egui::Context) {
    let Some(mut field) = view.session.path_field.take() else { return };
    let mut open = true;
    let mut picked = None;
    egui::Window::new(field.kind.title())
        .open(&mut open)
        .collapsible(false)
        .default_width(520.0)
        .show(ctx, |ui| {
            ui.label(egui::RichText::new(&field.why).weak());
            let what = if field.kind.wants_folder() {
                "Folder".to_owned()
            } else {
                format!("File (.{})", field.kind.extensions().join(", ."))
            };
            let response = ui
                .horizontal(|ui| {
                    let l = ui.label(&what);
                    ui.add(
                        egui::TextEdit::singleline(&mut field.text)
                            .id_salt("path-field-text")
                            .hint_text("/home/me/models/")
                            .desired_width(f32::INFINITY),
                    )
                    .labelled_by(l.id)
                })
                .inner;
            if response.changed() {
                field.error = None;
            }
            let enter = response.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let completions = field.completions(SHOWN);
            // Tab completes to the longest shared start of what matches.
            if response.has_focus()
                && ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Tab))
                && let Some(common) = common_start(&completions)
                && common.len() > field.text.len()
            {
                field.text = common;
            }
            if !completions.is_empty() {
                egui::ScrollArea::vertical().max_height(180.0).show(ui, |ui| {
                    for c in &completions {
                        let shown = c.rsplit(['/', std::path::MAIN_SEPARATOR]).find(|s| !s.is_empty()).unwrap_or(c);
                        let shown = if c.ends_with(['/', std::path::MAIN_SEPARATOR]) {
                            format!("{shown}/")
                        } else {
                            shown.to_owned()
                        };
                        if ui.selectable_label(false, shown).on_hover_text(c).clicked() {
                            field.text = c.clone();
                            field.error = None;
                        }
                    }
                });
            }
            if let Some(e) = &field.error {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            ui.horizontal(|ui| {
                let label = if field.kind.wants_folder() { "Use this folder" } else { "Open" };
                if ui.button(label).clicked() || enter {
                    match field.check() {
                        Ok(p) => picked = Some(p),
                        Err(e) => field.error = Some(e),
                    }
                }
                ui.weak("Dropping files on the window works too.");
            });
        });
    match picked {
        Some(p) => view.act(Action::Picked(field.kind, vec![p])),
        None if open => view.session.path_field = Some(field),
        None => {}
    }
}

/// The longest start all `items` share (by characters), if there are any.
fn common_start(items: &[String]) -> Option<String> {
    let first = items.first()?;
    let mut end = first.len();
    for s in &items[1..] {
        end = first
            .char_indices()
            .zip(s.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8())
            .min(end);
    }
    Some(first[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::common_start;

    #[test]
    fn the_shared_start_of_completions() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(common_start(&v(&["/m/sd15/", "/m/sdxl/"])).as_deref(), Some("/m/sd"));
        assert_eq!(common_start(&v(&["/m/a.safetensors"])).as_deref(), Some("/m/a.safetensors"));
        assert_eq!(common_start(&v(&["ab", "cd"])).as_deref(), Some(""));
        assert_eq!(common_start(&[]), None);
    }
}
