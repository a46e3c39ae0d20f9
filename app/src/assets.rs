//! Where the shipped assets are (the embedded default model, the demo LoRA): next to the
//! binary, in an installed `share/latent-studio`, or in the source tree. Used by the window
//! and the command line alike.

use std::path::PathBuf;

/// The folder `sub` of the shipped assets: next to the binary (`assets/SUB`, an installed
/// `../share/latent-studio/SUB`) or in the source tree.
fn asset_dirs(sub: &str) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets").join(sub)];
    if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        dirs.push(d.join("assets").join(sub));
        dirs.push(d.join("../share/latent-studio").join(sub));
    }
    dirs
}

/// The embedded default model, when this build ships one next to the binary or in the
/// source tree's `assets/`.
pub fn embedded_model() -> Option<PathBuf> {
    let name = "latent-studio-default.safetensors";
    let found = asset_dirs("models").into_iter().map(|d| d.join(name)).find(|p| p.is_file())?;
    Some(found.canonicalize().unwrap_or(found))
}

/// The shipped LoRA folder (the demo LoRA), when there is one.
pub fn embedded_lora_dir() -> Option<PathBuf> {
    let found = asset_dirs("loras").into_iter().find(|d| d.is_dir())?;
    Some(found.canonicalize().unwrap_or(found))
}
