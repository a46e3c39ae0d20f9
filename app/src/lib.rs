//! Latent Studio's binary crate as a library: the window (app, panels, state, files) and the
//! command line, so UI tests can drive the real window with a stand-in engine.

pub mod app;
mod bench;
pub mod cli;
pub mod files;
pub mod gui;
pub mod panels;
mod plot;
pub mod state;
pub mod training;
