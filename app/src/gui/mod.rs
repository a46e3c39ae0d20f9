//! The studio window: the eframe app ([`app`]), its persisted settings and session state
//! ([`state`]), the panels ([`panels`]) and the actions they return ([`actions`]), the file
//! thread ([`files`]). This file starts it: wgpu first, glow (OpenGL) when wgpu cannot start.

pub mod actions;
pub mod app;
pub mod connect;
pub mod files;
pub mod lab;
pub mod panels;
pub mod prompt_edit;
pub mod state;

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use eframe::egui;

use app::{Launch, StudioApp};

/// Which renderer to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RendererChoice {
    /// wgpu, then glow if wgpu fails.
    Auto,
    Wgpu,
    Glow,
}

/// Window options from the command line.
#[derive(Clone, Debug)]
pub struct WindowArgs {
    pub model: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub renderer: RendererChoice,
}

/// The window's icon (packaging/icons/make_icons.py draws it).
fn icon() -> egui::IconData {
    eframe::icon_data::from_png_bytes(include_bytes!("../../../packaging/icons/128/latent-studio.png")).unwrap_or_default()
}

fn options(renderer: eframe::Renderer) -> eframe::NativeOptions {
    eframe::NativeOptions {
        renderer,
        viewport: egui::ViewportBuilder::default()
            .with_title("Latent Studio")
            .with_app_id("latent-studio")
            .with_inner_size([1320.0, 860.0])
            .with_min_inner_size([800.0, 520.0])
            .with_icon(icon())
            .with_drag_and_drop(true),
        ..Default::default()
    }
}

fn run_with(renderer: eframe::Renderer, args: &WindowArgs) -> Result<()> {
    let model = args.model.clone();
    let output = args.output.clone();
    eframe::run_native(
        "Latent Studio",
        options(renderer),
        Box::new(move |cc| {
            let launch = Launch {
                model,
                output_dir: output,
                ..Launch::default()
            };
            let app = StudioApp::new(cc, launch).map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow!("{e}"))
}

/// Opens the studio window and returns when it closes.
pub fn run(args: WindowArgs) -> Result<()> {
    match args.renderer {
        RendererChoice::Wgpu => run_with(eframe::Renderer::Wgpu, &args),
        RendererChoice::Glow => run_with(eframe::Renderer::Glow, &args),
        RendererChoice::Auto => match run_with(eframe::Renderer::Wgpu, &args) {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("wgpu could not start ({e}); trying OpenGL (glow)");
                run_with(eframe::Renderer::Glow, &args)
            }
        },
    }
}
