//! The window's remote engine: a [`Backend`] that runs every job on a `latent-studio serve`
//! elsewhere, so the window keeps its own engine thread, protocol, previews and history and
//! only the work moves. Files go by name: the server's checkpoints, LoRAs and upscalers are
//! listed from it and named in requests, never sent as paths.

pub mod http;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use latent_engine::pipeline::{Hooks, Output};
use latent_engine::protocol::{CompareRequest, GenerateRequest, LatentsOut, LoraReport, LoraSpec, ModelInfo, ModelSpec, UpscaleRequest};
use latent_engine::worker::Backend;
use latent_engine::{EngineError, Result};
use serde_json::{Value, json};

pub use http::Server;

/// What the server offers, by name (shown in the window's pickers while connected).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    pub models: Vec<PathBuf>,
    pub loras: Vec<PathBuf>,
    pub upscalers: Vec<PathBuf>,
    pub embeddings: Vec<String>,
    /// The checkpoint loaded there now.
    pub current: Option<PathBuf>,
}

const CALL: Duration = Duration::from_secs(30);
/// Loading a big checkpoint takes a while.
const LOAD: Duration = Duration::from_secs(600);
/// How often a running job looks at its cancel flag.
const POLL: Duration = Duration::from_millis(50);

fn names(v: &Value, key: &str) -> Vec<PathBuf> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get(key).and_then(Value::as_str))
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Reads what a server offers; also proves the address and credentials work.
pub fn list(server: &Server) -> std::result::Result<Listing, String> {
    let current = server.json("GET", "/latent/v1/model", None, CALL)?;
    let models = server.json("GET", "/sdapi/v1/sd-models", None, CALL)?;
    let loras = server.json("GET", "/sdapi/v1/loras", None, CALL)?;
    let upscalers = server.json("GET", "/sdapi/v1/upscalers", None, CALL)?;
    let embeddings = server.json("GET", "/sdapi/v1/embeddings", None, CALL)?;
    Ok(Listing {
        // A1111's titles of hashed checkpoints end in " [hash]": the file name is before it.
        models: names(&models, "title")
            .into_iter()
            .map(|t| PathBuf::from(t.to_string_lossy().split(" [").next().unwrap_or_default().to_string()))
            .collect(),
        // The server's own paths: only their names are ever sent back.
        loras: names(&loras, "path"),
        upscalers: names(&upscalers, "model_path"),
        embeddings: embeddings
            .get("loaded")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        current: current.get("file").and_then(Value::as_str).map(PathBuf::from),
    })
}

/// Runs the window's jobs on a server.
pub struct RemoteBackend {
    server: Server,
    loras: Vec<wire::LoraByName>,
    /// The job `prepare` opened (the server answers a job with its event stream; its first
    /// event says whether the job was accepted and what it costs).
    open: Mutex<Option<(wire::Prepared, http::EventReader)>>,
}

impl RemoteBackend {
    pub fn new(server: Server) -> Self {
        Self {
            server,
            loras: vec![],
            open: Mutex::new(None),
        }
    }

    fn body(&self, request: &GenerateRequest) -> Result<Value> {
        let encode = |i: &Option<std::sync::Arc<latent_engine::protocol::ImageRgb8>>| {
            i.as_ref().map(|i| wire::png_b64(i, "")).transpose().map_err(EngineError::Other)
        };
        let mut request_only = request.clone();
        if let Some(h) = request_only.hires.as_mut() {
            h.model = h.model.as_deref().map(|m| PathBuf::from(stem(m)));
        }
        let body = wire::JobBody {
            init_image: encode(&request.init_image)?,
            mask: encode(&request.mask)?,
            request: request_only,
            loras: self.loras.clone(),
        };
        serde_json::to_value(&body).map_err(|e| EngineError::Other(e.to_string()))
    }

    /// Sends a job and waits for its first event: `started` (its cost) or why it was refused.
    fn open_job(&self, path: &str, body: &Value) -> Result<(u32, u32)> {
        let mut reader = self.server.events(path, body, POLL).map_err(EngineError::InvalidRequest)?;
        // Waits while the server's queue holds other clients' jobs.
        loop {
            match reader.next_event() {
                Ok(None) => continue,
                Ok(Some((name, data))) => {
                    let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    match name.as_str() {
                        "started" => {
                            let p = wire::Prepared {
                                total_steps: v.get("total_steps").and_then(Value::as_u64).unwrap_or(0) as u32,
                                nfe: v.get("nfe").and_then(Value::as_u64).unwrap_or(0) as u32,
                            };
                            let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            *open = Some((p, reader));
                            return Ok((p.total_steps, p.nfe));
                        }
                        "failed" => {
                            return Err(EngineError::InvalidRequest(
                                v.get("error").and_then(Value::as_str).unwrap_or("refused").to_string(),
                            ));
                        }
                        "cancelled" => return Err(EngineError::Cancelled { at_step: 0 }),
                        _ => continue,
                    }
                }
                Err(e) => return Err(EngineError::Other(format!("{}: {e}", self.server.url()))),
            }
        }
    }

    /// Relays the opened job's events into the hooks until its end.
    fn relay(&mut self, hooks: &mut dyn Hooks) -> Result<Output> {
        let open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some((_, mut reader)) = open else {
            return Err(EngineError::Other("the job was not opened on the server".into()));
        };
        let mut at_step = 0;
        loop {
            if hooks.cancelled() {
                // Hanging up cancels the job on the server.
                reader.close();
                return Err(EngineError::Cancelled { at_step });
            }
            let (name, data) = match reader.next_event() {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => return Err(EngineError::Other(format!("the connection to {} broke: {e}", self.server.url()))),
            };
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            let event = wire::job_event(&name, &v, 0).map_err(remote)?;
            use latent_engine::protocol::Event;
            match event {
                Event::Started { .. } => {}
                Event::Progress {
                    step,
                    total_steps,
                    step_time,
                    ..
                } => {
                    at_step = step;
                    hooks.progress(step, total_steps, step_time);
                }
                Event::Preview { step, image, .. } => {
                    if hooks.wants_preview(step) {
                        hooks.preview(step, image);
                    }
                }
                Event::Warning { message, .. } => hooks.warning(message),
                Event::Finished {
                    image, metadata, timings, ..
                } => {
                    return Ok(Output {
                        image,
                        latents: LatentsOut {
                            shape: vec![],
                            data: vec![],
                        },
                        metadata,
                        timings,
                    });
                }
                Event::Cancelled { at_step, .. } => return Err(EngineError::Cancelled { at_step }),
                Event::Failed { error, .. } => return Err(EngineError::Other(error)),
                Event::CompareCell { cell, .. } => hooks.cell(&cell),
                Event::ModelLoaded { .. } | Event::LorasApplied { .. } => {}
            }
        }
    }
}

fn remote(e: String) -> EngineError {
    EngineError::Other(e)
}

impl Backend for RemoteBackend {
    fn load_model(&mut self, spec: &ModelSpec) -> Result<ModelInfo> {
        let v = self
            .server
            .json("POST", "/latent/v1/model", Some(&json!({"name": file_name(&spec.path)})), LOAD)
            .map_err(remote)?;
        let mut info = wire::model_info(&v).map_err(remote)?;
        info.device = format!("{} on {}", info.device, self.server.url());
        Ok(info)
    }

    fn prepare(&self, request: &GenerateRequest) -> Result<(u32, u32)> {
        let body = self.body(request)?;
        self.open_job("/latent/v1/generate", &body)
    }

    fn generate(&mut self, _request: &GenerateRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        self.relay(hooks)
    }

    fn prepare_compare(&self, request: &CompareRequest) -> Result<(u32, u32)> {
        let body = wire::CompareBody {
            base: GenerateRequest {
                init_image: None,
                mask: None,
                ..request.base.clone()
            },
            solvers: request.solvers.clone(),
            budgets: request.budgets.clone(),
            reference_solver: request.reference_solver.clone(),
            reference_steps: request.reference_steps,
            loras: self.loras.clone(),
        };
        let body = serde_json::to_value(&body).map_err(|e| EngineError::Other(e.to_string()))?;
        self.open_job("/latent/v1/compare", &body)
    }

    fn compare(&mut self, _request: &CompareRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        self.relay(hooks)
    }

    fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<Vec<LoraReport>> {
        let wanted: Vec<wire::LoraByName> = loras
            .iter()
            .map(|l| wire::LoraByName {
                name: stem(&l.path),
                strength: l.strength,
                text_strength: l.text_strength,
            })
            .collect();
        let v = self
            .server
            .json("POST", "/latent/v1/loras", Some(&json!(wanted)), LOAD)
            .map_err(remote)?;
        self.loras = wanted;
        Ok(v.get("reports")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(wire::report).collect())
            .unwrap_or_default())
    }

    fn prepare_upscale(&self, _request: &UpscaleRequest) -> Result<u32> {
        Ok(1)
    }

    fn upscale(&mut self, request: &UpscaleRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        let started = Instant::now();
        let body = json!({
            "image": wire::png_b64(&request.image, &request.parameters).map_err(remote)?,
            "upscaler_1": stem(&request.model),
        });
        let v = self
            .server
            .json("POST", "/sdapi/v1/extra-single-image", Some(&body), LOAD)
            .map_err(remote)?;
        let b64 = v.get("image").and_then(Value::as_str).unwrap_or_default();
        let image = wire::picture_b64(b64, u64::MAX).map_err(remote)?;
        hooks.progress(1, 1, started.elapsed());
        Ok(Output {
            image,
            latents: LatentsOut {
                shape: vec![],
                data: vec![],
            },
            metadata: v.get("html_info").and_then(Value::as_str).unwrap_or_default().to_string(),
            timings: latent_engine::protocol::Timings {
                total: started.elapsed(),
                ..Default::default()
            },
        })
    }
}
