//! The studio's own endpoints (`/latent/v1/...`), used by the window's remote engine and by
//! scripts that want every event: the loaded model, loading one by name, LoRA sets by name,
//! a generation answered by a stream of its events, and the stream of every event.
//! The JSON is in `crate::remote::wire`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use latent_engine::protocol::{Event, LoraSpec, ModelSpec};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::a1111::{FieldError, MAX_SIDE, MAX_STEPS};
use super::hub::CancelOnDrop;
use super::{Shared, checkpoint_files, failure, parse, queue_full, title, unprocessable, upscaler_files};
use crate::remote::wire::{self, JobBody, LoraByName};

fn sse(e: &Event) -> SseEvent {
    match wire::event_sse(e) {
        Some((name, data)) => SseEvent::default().event(name).data(data.to_string()),
        None => SseEvent::default().comment("an event whose picture could not be encoded"),
    }
}

fn model_answer(app: &Shared) -> Response {
    match app.hub.model() {
        Some((path, info)) => axum::Json(wire::model_json(&title(&path), &info)).into_response(),
        None => failure(StatusCode::SERVICE_UNAVAILABLE, "NoModel", "no model is loaded"),
    }
}

/// `GET /latent/v1/model`.
pub(super) async fn get_model(State(app): State<Shared>) -> Response {
    model_answer(&app)
}

/// `POST /latent/v1/model {"name": "file or stem"}`: loads a checkpoint of the model folders.
pub(super) async fn set_model(State(app): State<Shared>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Req {
        name: String,
    }
    let req: Req = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let want = req.name.split(" [").next().unwrap_or_default().trim();
    let found = checkpoint_files(&app)
        .into_iter()
        .find(|p| title(p).eq_ignore_ascii_case(want) || crate::gui::state::file_stem(p).eq_ignore_ascii_case(want));
    let Some(path) = found else {
        return unprocessable(&[FieldError::new(
            "name",
            format!("no checkpoint {want:?} in the server's model folders"),
        )]);
    };
    if app.hub.model().map(|(p, _)| p) != Some(path.clone())
        && let Err(e) = app.hub.load(ModelSpec::new(&path)).await
    {
        return failure(StatusCode::UNPROCESSABLE_ENTITY, "ModelLoadFailed", &e);
    }
    model_answer(&app)
}

fn lora_files(app: &Shared) -> Vec<PathBuf> {
    let mut dirs = app.config.model_dirs.clone();
    dirs.extend(crate::assets::embedded_lora_dir());
    crate::gui::files::scan_loras(&dirs)
}

/// LoRAs by name into files of the server's folders; names only, never paths.
fn resolve_loras(app: &Shared, wanted: &[LoraByName]) -> Result<Vec<LoraSpec>, Response> {
    let files = lora_files(app);
    wanted
        .iter()
        .map(|l| {
            let path = files
                .iter()
                .find(|p| crate::gui::state::file_stem(p).eq_ignore_ascii_case(l.name.trim()))
                .ok_or_else(|| {
                    unprocessable(&[FieldError::new(
                        "loras",
                        format!("no LoRA {:?} in the server's folders (GET /sdapi/v1/loras lists them)", l.name),
                    )])
                })?;
            if !l.strength.is_finite() || l.text_strength.is_some_and(|t| !t.is_finite()) {
                return Err(unprocessable(&[FieldError::new("loras", "strengths must be numbers")]));
            }
            Ok(LoraSpec {
                path: path.clone(),
                strength: l.strength,
                text_strength: l.text_strength,
            })
        })
        .collect()
}

/// `POST /latent/v1/loras [{"name", "strength", "text_strength"}]`: applies the set and
/// answers the engine's reports (layers applied, keys that matched nothing).
pub(super) async fn set_loras(State(app): State<Shared>, body: Bytes) -> Response {
    let wanted: Vec<LoraByName> = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let loras = match resolve_loras(&app, &wanted) {
        Ok(l) => l,
        Err(r) => return r,
    };
    match app.hub.set_loras(loras).await {
        Ok(reports) => axum::Json(json!({"reports": reports.iter().map(wire::report_json).collect::<Vec<_>>()})).into_response(),
        Err(e) => failure(StatusCode::UNPROCESSABLE_ENTITY, "LoraFailed", &e),
    }
}

/// `POST /latent/v1/generate`: a [`JobBody`] answered by the job's events as server-sent
/// events (`started`, `progress`, `preview`, `warning`, then one of `finished`, `cancelled`,
/// `failed`). Hanging up cancels the job.
pub(super) async fn generate(State(app): State<Shared>, body: Bytes) -> Response {
    let job: JobBody = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut request = job.request;
    let mut errors = vec![];
    for (field, v) in [("request.width", request.width), ("request.height", request.height)] {
        if !(8..=MAX_SIDE).contains(&v) {
            errors.push(FieldError::new(field, format!("must be 8 to {MAX_SIDE}, got {v}")));
        }
    }
    if request.steps > MAX_STEPS {
        errors.push(FieldError::new("request.steps", format!("at most {MAX_STEPS}")));
    }
    let max_pixels = u64::from(MAX_SIDE).pow(2);
    for (field, b64, slot) in [
        ("init_image", job.init_image, &mut request.init_image),
        ("mask", job.mask, &mut request.mask),
    ] {
        if let Some(b) = b64 {
            match wire::picture_b64(&b, max_pixels) {
                Ok(i) => *slot = Some(Arc::new(i)),
                Err(e) => errors.push(FieldError::new(field, e)),
            }
        }
    }
    if let Some(h) = request.hires.as_mut()
        && let Some(m) = h.model.take()
    {
        let name = crate::gui::state::file_stem(&m);
        match upscaler_files(&app)
            .into_iter()
            .find(|p| crate::gui::state::file_stem(p).eq_ignore_ascii_case(&name))
        {
            Some(p) => h.model = Some(p),
            None => errors.push(FieldError::new(
                "request.hires.model",
                format!("no upscaler {name:?} in the server's folders"),
            )),
        }
    }
    if !errors.is_empty() {
        return unprocessable(&errors);
    }
    let loras = match resolve_loras(&app, &job.loras) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if let Some(r) = queue_full(&app, 1) {
        return r;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    match app.hub.generate_with(request, loras, Some(tx)) {
        Ok((id, _)) => job_stream(&app, id, rx),
        Err(e) => failure(StatusCode::SERVICE_UNAVAILABLE, "EngineBusy", &e),
    }
}

/// `POST /latent/v1/compare`: the solver lab ([`wire::CompareBody`]) answered as
/// `/generate` is, with a `compare_cell` event per cell before `finished` (the reference).
pub(super) async fn compare(State(app): State<Shared>, body: Bytes) -> Response {
    let job: wire::CompareBody = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let b = &job.base;
    if !(8..=MAX_SIDE).contains(&b.width) || !(8..=MAX_SIDE).contains(&b.height) || job.reference_steps > MAX_STEPS {
        return unprocessable(&[FieldError::new(
            "base",
            format!("sizes 8 to {MAX_SIDE}, at most {MAX_STEPS} reference steps"),
        )]);
    }
    let loras = match resolve_loras(&app, &job.loras) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if let Some(r) = queue_full(&app, 1) {
        return r;
    }
    let request = latent_engine::protocol::CompareRequest {
        base: job.base,
        solvers: job.solvers,
        budgets: job.budgets,
        reference_solver: job.reference_solver,
        reference_steps: job.reference_steps,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    match app.hub.compare_with(request, loras, Some(tx)) {
        Ok((id, _)) => job_stream(&app, id, rx),
        Err(e) => failure(StatusCode::SERVICE_UNAVAILABLE, "EngineBusy", &e),
    }
}

/// A job's events as server-sent events until its final one; hanging up cancels it.
fn job_stream(app: &Shared, id: latent_engine::protocol::JobId, rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let guard = CancelOnDrop {
        hub: app.hub.clone(),
        ids: vec![id],
        done: false,
    };
    let stream = futures_util::stream::unfold((rx, guard, false), |(mut rx, mut guard, ended)| async move {
        if ended {
            return None;
        }
        let e = rx.recv().await?;
        let last = e.is_final();
        guard.done |= last;
        Some((Ok::<_, Infallible>(sse(&e)), (rx, guard, last)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /latent/v1/events`: every engine event from now on (all jobs, with their `id`),
/// `lagged` with the count when a slow reader missed some.
pub(super) async fn events(State(app): State<Shared>) -> Response {
    let rx = app.hub.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(e) => Some((Ok::<_, Infallible>(sse(&e)), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Some((Ok(SseEvent::default().event("lagged").data(json!({"missed": n}).to_string())), rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
