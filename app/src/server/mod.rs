//! `latent-studio serve`: AUTOMATIC1111's `/sdapi/v1` HTTP API (and `/healthz`, `/metrics`)
//! over one engine thread, on tokio and axum. hub.rs talks to the engine, a1111.rs holds the
//! JSON of the API; this file has the routes, authentication and limits.

pub mod a1111;
pub mod hub;
mod native;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use latent_engine::protocol::{ModelSpec, UpscaleRequest};
use serde_json::{Value, json};

use a1111::FieldError;
use hub::{CancelOnDrop, Hub, Outcome};

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// The model loaded at start (else the embedded default).
    pub model: Option<PathBuf>,
    /// Folders with checkpoints (`sd-models`, `sd_model_checkpoint`), LoRAs and embeddings,
    /// in A1111's or ComfyUI's layout.
    pub model_dirs: Vec<PathBuf>,
    /// `user:pass` pairs for HTTP Basic (A1111's `--api-auth`).
    pub basic: Vec<String>,
    /// Bearer tokens.
    pub tokens: Vec<String>,
    /// Jobs (images) waiting or running at most; more answers 503.
    pub max_queue: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7860)),
            model: None,
            model_dirs: vec![],
            basic: vec![],
            tokens: vec![],
            max_queue: 64,
            max_body: 64 << 20,
        }
    }
}

impl ServeConfig {
    /// Refuses to listen beyond this machine without authentication.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.listen.ip().is_loopback() && self.basic.is_empty() && self.tokens.is_empty() {
            anyhow::bail!(
                "listening on {} would let anyone on the network run jobs: give --api-auth user:pass or --token-file, or listen on 127.0.0.1",
                self.listen
            );
        }
        for b in &self.basic {
            if !b.contains(':') {
                anyhow::bail!("--api-auth takes user:password, got {b:?}");
            }
        }
        Ok(())
    }
}

struct App {
    hub: Arc<Hub>,
    config: ServeConfig,
    /// The server's own options (A1111's `/options`).
    clip_skip: Mutex<u32>,
}

type Shared = Arc<App>;

/// A running server: its address, and a way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the server and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Blocks until the server stops (Ctrl+C in `serve`).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the engine, loads the model and serves on its own thread; returns once it listens.
pub fn start(config: ServeConfig) -> anyhow::Result<Running> {
    config.check()?;
    let model = config
        .model
        .clone()
        .or_else(crate::assets::embedded_model)
        .ok_or_else(|| anyhow::anyhow!("no --model given, and this build has no embedded model"))?;
    let mut lora_dirs = config.model_dirs.clone();
    lora_dirs.extend(crate::assets::embedded_lora_dir());
    let engine_config = latent_engine::EngineConfig {
        lora_dirs,
        embedding_dirs: crate::gui::files::embedding_dirs(&config.model_dirs),
        ..latent_engine::EngineConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("latent-serve")
        .build()?;
    let hub = Hub::start(engine_config)?;
    rt.block_on(hub.load(ModelSpec::new(&model)))
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", model.display()))?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(config.listen))?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App {
        hub,
        config: config.clone(),
        clip_skip: Mutex::new(1),
    });
    let router = routes(app, config.max_body);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("latent-serve".into()).spawn(move || {
        rt.block_on(async move {
            let stop = async {
                tokio::select! {
                    _ = stop_rx => {}
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminated() => {}
                }
            };
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
                eprintln!("serve: {e}");
            }
        });
        // Jobs still running are not waited for.
        rt.shutdown_timeout(Duration::from_millis(100));
    })?;
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// SIGTERM (systemd's stop, `docker stop`): stop taking requests and end the way Ctrl+C does.
async fn terminated() {
    #[cfg(unix)]
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
        return;
    }
    std::future::pending::<()>().await
}

fn routes(app: Shared, max_body: usize) -> Router {
    let api = Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/extra-single-image", post(extra_single_image))
        .route("/sdapi/v1/options", get(get_options).post(set_options))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/schedulers", get(schedulers))
        .route("/sdapi/v1/upscalers", get(upscalers))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/embeddings", get(embeddings))
        .route("/sdapi/v1/png-info", post(png_info))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/skip", post(skip))
        .route("/sdapi/v1/refresh-checkpoints", post(refresh))
        .route("/latent/v1/model", get(native::get_model).post(native::set_model))
        .route("/latent/v1/loras", post(native::set_loras))
        .route("/latent/v1/generate", post(native::generate))
        .route("/latent/v1/compare", post(native::compare))
        .route("/latent/v1/events", get(native::events))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

/// Equal in time whatever the bytes (no early exit on the first difference).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(app): State<Shared>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let c = &app.config;
    if c.basic.is_empty() && c.tokens.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = if let Some(b) = given.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).unwrap_or_default();
        c.basic.iter().fold(false, |acc, pair| acc | same(pair.as_bytes(), &decoded))
    } else if let Some(t) = given.strip_prefix("Bearer ") {
        c.tokens
            .iter()
            .fold(false, |acc, tok| acc | same(tok.as_bytes(), t.trim().as_bytes()))
    } else {
        false
    };
    if ok {
        return next.run(request).await;
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"detail": "Incorrect username or password"})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"latent-studio\""));
    r
}

/// FastAPI's 422: `{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}`.
fn unprocessable(errors: &[FieldError]) -> Response {
    let detail: Vec<Value> = errors
        .iter()
        .map(|e| json!({"loc": ["body", e.field], "msg": e.msg, "type": "value_error"}))
        .collect();
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "detail": detail }))).into_response()
}

fn failure(status: StatusCode, error: &str, detail: &str) -> Response {
    (status, axum::Json(json!({"error": error, "detail": detail, "errors": detail}))).into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        let field = if e.is_data() { "body" } else { "json" };
        unprocessable(&[FieldError::new(field, e.to_string())])
    })
}

fn queue_full(app: &App, wanted: usize) -> Option<Response> {
    let queued = app.hub.queued();
    if queued + wanted > app.config.max_queue {
        let mut r = failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "QueueFull",
            &format!("{queued} jobs are queued (at most {}); try again", app.config.max_queue),
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Some(r);
    }
    None
}

fn seed_now() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15) % 4_294_967_295
}

fn model_name(app: &App) -> String {
    app.hub
        .model()
        .map(|(p, _)| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
        .unwrap_or_default()
}

/// Runs every image of a planned request, in order; returns the images and their texts, or
/// the response to give when the first job was refused or one failed.
async fn run_planned(app: &Shared, planned: &a1111::Planned) -> Result<(Vec<String>, Vec<String>), Response> {
    if let Some(r) = queue_full(app, planned.images as usize) {
        return Err(r);
    }
    let mut guard = CancelOnDrop {
        hub: app.hub.clone(),
        ids: vec![],
        done: false,
    };
    let mut waits = vec![];
    for i in 0..planned.images {
        let mut r = planned.request.clone();
        r.seed = planned.seed.wrapping_add(u64::from(i));
        match app.hub.generate(r) {
            Ok((id, rx)) => {
                guard.ids.push(id);
                waits.push(rx);
            }
            Err(e) => return Err(failure(StatusCode::SERVICE_UNAVAILABLE, "EngineBusy", &e)),
        }
    }
    let (mut images, mut texts) = (vec![], vec![]);
    for rx in waits {
        match rx.await {
            Ok(Outcome::Finished { image, metadata }) => {
                let b64 =
                    a1111::encode_image(&image, &metadata).map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, "EncodeError", &e))?;
                images.push(b64);
                texts.push(metadata);
            }
            // Interrupted: the images made so far are the answer (as A1111).
            Ok(Outcome::Cancelled) => {}
            Ok(Outcome::Failed { error, started: false }) => {
                guard.done = true;
                app.hub.cancel_all_of(&guard.ids);
                return Err(unprocessable(&[FieldError::new("body", error)]));
            }
            Ok(Outcome::Failed { error, started: true }) => {
                return Err(failure(StatusCode::INTERNAL_SERVER_ERROR, "GenerationFailed", &error));
            }
            Err(_) => return Err(failure(StatusCode::INTERNAL_SERVER_ERROR, "EngineStopped", "the engine stopped")),
        }
    }
    guard.done = true;
    Ok((images, texts))
}

fn answer(app: &App, common: &a1111::Common, planned: &a1111::Planned, body: Value, images: Vec<String>, texts: &[String]) -> Response {
    let info = a1111::info(common, planned, texts, &model_name(app));
    let images = if common.send_images { images } else { vec![] };
    axum::Json(json!({"images": images, "parameters": body, "info": info})).into_response()
}

async fn txt2img(State(app): State<Shared>, body: Bytes) -> Response {
    let req: a1111::Txt2Img = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let clip_skip = *app.clip_skip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let planned = match req.plan(clip_skip, seed_now()) {
        Ok(p) => p,
        Err(e) => return unprocessable(&e),
    };
    match run_planned(&app, &planned).await {
        Ok((images, texts)) => answer(
            &app,
            &req.common,
            &planned,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
            images,
            &texts,
        ),
        Err(r) => r,
    }
}

async fn img2img(State(app): State<Shared>, body: Bytes) -> Response {
    let req: a1111::Img2Img = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let clip_skip = *app.clip_skip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let planned = match req.plan(clip_skip, seed_now()) {
        Ok(p) => p,
        Err(e) => return unprocessable(&e),
    };
    // A1111 echoes the request without the pictures.
    let mut echo: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(o) = echo.as_object_mut() {
        o.insert("init_images".into(), Value::Null);
        o.insert("mask".into(), Value::Null);
    }
    match run_planned(&app, &planned).await {
        Ok((images, texts)) => answer(&app, &req.common, &planned, echo, images, &texts),
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct ExtraSingle {
    image: String,
    #[serde(default)]
    upscaler_1: Option<String>,
}

/// A1111's Extras on one picture: enlarged by an upscaler model of the model folders.
async fn extra_single_image(State(app): State<Shared>, body: Bytes) -> Response {
    let req: ExtraSingle = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let image = match a1111::decode_image("image", &req.image) {
        Ok(i) => i,
        Err(e) => return unprocessable(&[e]),
    };
    let name = req.upscaler_1.unwrap_or_default();
    let found = upscaler_files(&app)
        .into_iter()
        .find(|p| crate::gui::state::file_stem(p).eq_ignore_ascii_case(name.trim()));
    let Some(model) = found else {
        return unprocessable(&[FieldError::new(
            "upscaler_1",
            format!("no upscaler {name:?} in the model folders (GET /sdapi/v1/upscalers lists them)"),
        )]);
    };
    if let Some(r) = queue_full(&app, 1) {
        return r;
    }
    // The picture's own parameters stay with the result (A1111's extras keep its PNG info).
    let parameters = req
        .image
        .split_once("base64,")
        .map_or(req.image.as_str(), |(_, d)| d)
        .trim()
        .as_bytes()
        .to_vec();
    let parameters = base64::engine::general_purpose::STANDARD
        .decode(parameters)
        .ok()
        .and_then(|b| latent_engine::image_io::png_bytes_parameters(&b).ok().flatten())
        .unwrap_or_default();
    let request = UpscaleRequest {
        image: Arc::new(image),
        model,
        parameters,
        tile: 192,
        overlap: 8,
    };
    let (id, rx) = match app.hub.upscale(request) {
        Ok(v) => v,
        Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, "EngineBusy", &e),
    };
    let mut guard = CancelOnDrop {
        hub: app.hub.clone(),
        ids: vec![id],
        done: false,
    };
    let out = rx.await;
    guard.done = true;
    match out {
        Ok(Outcome::Finished { image, metadata }) => match a1111::encode_image(&image, &metadata) {
            Ok(b64) => axum::Json(json!({"html_info": metadata, "image": b64})).into_response(),
            Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, "EncodeError", &e),
        },
        Ok(Outcome::Cancelled) => failure(StatusCode::INTERNAL_SERVER_ERROR, "Interrupted", "the upscale was interrupted"),
        Ok(Outcome::Failed { error, .. }) => unprocessable(&[FieldError::new("body", error)]),
        Err(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "EngineStopped", "the engine stopped"),
    }
}

fn checkpoint_files(app: &App) -> Vec<PathBuf> {
    let mut files = crate::gui::files::scan_models(&app.config.model_dirs);
    if let Some(e) = crate::assets::embedded_model() {
        files.insert(0, e);
    }
    if let Some((p, _)) = app.hub.model()
        && !files.contains(&p)
    {
        files.insert(0, p);
    }
    files
}

fn upscaler_files(app: &App) -> Vec<PathBuf> {
    crate::gui::files::scan_vaes(&app.config.model_dirs, &["ESRGAN", "RealESRGAN", "upscale_models"])
}

fn title(p: &std::path::Path) -> String {
    crate::gui::state::file_name(p)
}

async fn get_options(State(app): State<Shared>) -> Response {
    let current = app.hub.model().map(|(p, _)| title(&p)).unwrap_or_default();
    let clip_skip = *app.clip_skip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    axum::Json(json!({
        "sd_model_checkpoint": current,
        "CLIP_stop_at_last_layers": clip_skip,
        "samples_format": "png",
        "sd_vae": "Automatic",
    }))
    .into_response()
}

async fn set_options(State(app): State<Shared>, body: Bytes) -> Response {
    let v: serde_json::Map<String, Value> = match parse(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(c) = v.get("CLIP_stop_at_last_layers") {
        match c.as_u64() {
            Some(n) if (1..=12).contains(&n) => *app.clip_skip.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = n as u32,
            _ => return unprocessable(&[FieldError::new("CLIP_stop_at_last_layers", "must be 1 to 12")]),
        }
    }
    if let Some(m) = v.get("sd_model_checkpoint") {
        let Some(name) = m.as_str() else {
            return unprocessable(&[FieldError::new("sd_model_checkpoint", "must be a model's title or name")]);
        };
        // A1111's titles carry " [hash]"; names may come without the extension.
        let want = name.split(" [").next().unwrap_or(name).trim().to_string();
        let found = checkpoint_files(&app)
            .into_iter()
            .find(|p| title(p).eq_ignore_ascii_case(&want) || crate::gui::state::file_stem(p).eq_ignore_ascii_case(&want));
        let Some(path) = found else {
            return unprocessable(&[FieldError::new(
                "sd_model_checkpoint",
                format!("no checkpoint {want:?} in the model folders (GET /sdapi/v1/sd-models lists them)"),
            )]);
        };
        if app.hub.model().map(|(p, _)| p) != Some(path.clone())
            && let Err(e) = app.hub.load(ModelSpec::new(&path)).await
        {
            return failure(StatusCode::INTERNAL_SERVER_ERROR, "ModelLoadFailed", &e);
        }
    }
    axum::Json(Value::Null).into_response()
}

async fn sd_models(State(app): State<Shared>) -> Response {
    let list: Vec<Value> = checkpoint_files(&app)
        .iter()
        .map(|p| {
            // A1111 lists hashes of the checkpoints it has loaded; the title then ends in " [hash]".
            let sha = app.hub.sha256(p);
            let short = sha.as_ref().map(|h| h[..10].to_string());
            json!({
                "title": short.as_ref().map_or_else(|| title(p), |h| format!("{} [{h}]", title(p))),
                "model_name": crate::gui::state::file_stem(p),
                "hash": short,
                "sha256": sha,
                "filename": p.display().to_string(),
                "config": Value::Null,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

async fn samplers() -> Response {
    let list: Vec<Value> = latent_engine::sampling::SOLVERS
        .iter()
        .map(|s| json!({"name": s.a1111, "aliases": [s.name], "options": {}}))
        .collect();
    axum::Json(list).into_response()
}

async fn schedulers() -> Response {
    use latent_engine::sampling::schedule::{SCHEDULES, ScheduleKind};
    let list: Vec<Value> = SCHEDULES
        .iter()
        .filter_map(|(name, about)| {
            let k = ScheduleKind::parse(name)?;
            let a1111_name = if *name == "default" { "automatic".to_string() } else { name.replace('-', "_") };
            Some(json!({"name": a1111_name, "label": k.a1111(), "aliases": [name], "default_rho": -1, "need_inner_model": false, "about": about}))
        })
        .collect();
    axum::Json(list).into_response()
}

async fn upscalers(State(app): State<Shared>) -> Response {
    let list: Vec<Value> = upscaler_files(&app)
        .iter()
        .map(|p| json!({"name": crate::gui::state::file_stem(p), "model_name": "ESRGAN", "model_path": p.display().to_string(), "model_url": Value::Null, "scale": Value::Null}))
        .collect();
    axum::Json(list).into_response()
}

async fn loras(State(app): State<Shared>) -> Response {
    let mut dirs = app.config.model_dirs.clone();
    dirs.extend(crate::assets::embedded_lora_dir());
    let list: Vec<Value> = crate::gui::files::scan_loras(&dirs)
        .iter()
        .map(|p| {
            let name = crate::gui::state::file_stem(p);
            json!({"name": name, "alias": name, "path": p.display().to_string(), "metadata": {}})
        })
        .collect();
    axum::Json(list).into_response()
}

async fn embeddings(State(app): State<Shared>) -> Response {
    let (found, _) = latent_engine::checkpoint::embedding::scan(&crate::gui::files::embedding_dirs(&app.config.model_dirs));
    let loaded: serde_json::Map<String, Value> = found
        .into_iter()
        .map(|(name, path)| (name, json!({"filename": path.display().to_string()})))
        .collect();
    axum::Json(json!({"loaded": loaded, "skipped": {}})).into_response()
}

async fn png_info(body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Req {
        image: String,
    }
    let req: Req = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let data = req.image.split_once("base64,").map_or(req.image.as_str(), |(_, d)| d).trim();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return unprocessable(&[FieldError::new("image", "not base64")]);
    };
    let text = match latent_engine::image_io::png_bytes_parameters(&bytes) {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => return unprocessable(&[FieldError::new("image", e.to_string())]),
    };
    let parameters: serde_json::Map<String, Value> = latent_engine::metadata::Parameters::parse(&text)
        .map(|p| {
            let mut m: serde_json::Map<String, Value> = p.map().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            m.insert("Prompt".into(), Value::String(p.prompt.clone()));
            m.insert("Negative prompt".into(), Value::String(p.negative.clone()));
            m
        })
        .unwrap_or_default();
    axum::Json(json!({"info": text, "items": {"parameters": text}, "parameters": parameters})).into_response()
}

#[derive(serde::Deserialize)]
struct ProgressQuery {
    #[serde(default)]
    skip_current_image: bool,
}

async fn progress(State(app): State<Shared>, Query(q): Query<ProgressQuery>) -> Response {
    let r = app.hub.running();
    let queued = app.hub.queued();
    let fraction = if r.total > 0 { f64::from(r.step) / f64::from(r.total) } else { 0.0 };
    let eta = match (r.started, r.step) {
        (Some(t), s) if s > 0 => t.elapsed().as_secs_f64() / f64::from(s) * f64::from(r.total.saturating_sub(s)),
        _ => 0.0,
    };
    let image = if q.skip_current_image {
        None
    } else {
        r.preview.as_ref().and_then(|p| a1111::encode_image(p, "").ok())
    };
    axum::Json(json!({
        "progress": fraction,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": false,
            "job": r.id.map(|i| format!("job {i}")).unwrap_or_default(),
            "job_count": queued,
            "job_timestamp": "",
            "job_no": 0,
            "sampling_step": r.step,
            "sampling_steps": r.total,
        },
        "current_image": image,
        "textinfo": Value::Null,
    }))
    .into_response()
}

async fn interrupt(State(app): State<Shared>) -> Response {
    app.hub.cancel_all();
    axum::Json(Value::Null).into_response()
}

async fn skip(State(app): State<Shared>) -> Response {
    app.hub.cancel_running();
    axum::Json(Value::Null).into_response()
}

async fn refresh() -> Response {
    // The folders are read at every listing.
    axum::Json(Value::Null).into_response()
}

async fn metrics(State(app): State<Shared>) -> Response {
    let c = app.hub.counters();
    let text = format!(
        "# HELP latent_jobs_total Jobs ended, by outcome.\n# TYPE latent_jobs_total counter\n\
         latent_jobs_total{{outcome=\"finished\"}} {}\nlatent_jobs_total{{outcome=\"cancelled\"}} {}\nlatent_jobs_total{{outcome=\"failed\"}} {}\n\
         # HELP latent_queue_depth Jobs waiting or running.\n# TYPE latent_queue_depth gauge\nlatent_queue_depth {}\n\
         # HELP latent_step_seconds Time of the sampling steps.\n# TYPE latent_step_seconds summary\n\
         latent_step_seconds_sum {}\nlatent_step_seconds_count {}\n\
         # HELP latent_nfe_total Network evaluations of finished jobs.\n# TYPE latent_nfe_total counter\nlatent_nfe_total {}\n",
        c.finished,
        c.cancelled,
        c.failed,
        app.hub.queued(),
        c.step_seconds,
        c.steps,
        c.nfe
    );
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    (h, text).into_response()
}
