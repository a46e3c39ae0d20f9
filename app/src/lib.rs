//! Latent Studio's binary crate as a library, so UI tests can drive the real window with a
//! stand-in engine: the command line ([`cli`]), the window ([`gui`]) and the HTTP API
//! ([`server`]), with the little they share (where the shipped assets are, PNG files).

pub mod assets;
pub mod cli;
pub mod gui;
pub mod lab_report;
pub mod plot;
pub mod png;
pub mod remote;
pub mod resize;
pub mod server;
