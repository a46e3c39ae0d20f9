//! `latent-studio serve`: the A1111-compatible HTTP API (the server itself is `crate::server`).

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on; another address than this machine's needs --api-auth
    /// or --token-file.
    #[arg(long, default_value = "127.0.0.1:7860")]
    pub listen: std::net::SocketAddr,
    /// The model to load at start (default: the embedded one); `sd_model_checkpoint` in
    /// POST /sdapi/v1/options switches among the --models folders' checkpoints.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Folders with checkpoints, LoRAs, embeddings and upscalers (an A1111 or ComfyUI
    /// install folder as it is); may be given several times.
    #[arg(long = "models")]
    pub model_dirs: Vec<PathBuf>,
    /// HTTP Basic credentials, user:password (A1111's --api-auth; comma-separated pairs).
    #[arg(long, value_delimiter = ',')]
    pub api_auth: Vec<String>,
    /// A file whose lines are accepted bearer tokens (`Authorization: Bearer TOKEN`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Images waiting or running at most; a request beyond it answers 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_body_mib: usize,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let tokens = match &a.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("--token-file {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
        None => vec![],
    };
    if a.token_file.is_some() && tokens.is_empty() {
        anyhow::bail!("--token-file has no token in it");
    }
    for d in &a.model_dirs {
        if !d.is_dir() {
            anyhow::bail!("--models {}: not a folder", d.display());
        }
    }
    let config = crate::server::ServeConfig {
        listen: a.listen,
        model: a.model,
        model_dirs: a.model_dirs,
        basic: a.api_auth,
        tokens,
        max_queue: a.max_queue.max(1),
        max_body: a.max_body_mib.max(1) << 20,
    };
    let running = crate::server::start(config)?;
    // Scripts read this line to find the port (with --listen 127.0.0.1:0).
    println!("latent-studio serve: listening on http://{}", running.addr);
    running.wait();
    Ok(())
}
