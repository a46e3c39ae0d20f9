//! The studio's own JSON over HTTP (`/latent/v1/...`), shared by `serve` and the window's
//! remote engine: engine events as server-sent events, requests with their pictures, model
//! information and LoRA reports. Pictures travel as base64 PNG (with their `parameters` text
//! where they have one), so nothing is lost on the way.

use std::time::Duration;

use base64::Engine as _;
use latent_engine::protocol::{DType, Event, GenerateRequest, ImageRgb8, LoraReport, ModelInfo, Timings};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Base64 PNG of a picture with its `parameters` text ("" for none).
pub fn png_b64(image: &ImageRgb8, parameters: &str) -> Result<String, String> {
    let png = latent_engine::image_io::encode_png(image, parameters).map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}

/// A picture from base64 (a `data:image/png;base64,` prefix allowed), at most `max_pixels`.
pub fn picture_b64(b64: &str, max_pixels: u64) -> Result<ImageRgb8, String> {
    let data = b64.split_once("base64,").map_or(b64, |(_, d)| d).trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("not base64: {e}"))?;
    let img = image::load_from_memory(&bytes).map_err(|e| format!("not a PNG picture: {e}"))?;
    if img.width() == 0 || img.height() == 0 || u64::from(img.width()) * u64::from(img.height()) > max_pixels {
        return Err(format!("a {}x{} picture is out of range", img.width(), img.height()));
    }
    let rgb = img.to_rgb8();
    Ok(ImageRgb8 {
        width: rgb.width(),
        height: rgb.height(),
        pixels: rgb.into_raw(),
    })
}

/// A LoRA by name (a file stem in the server's LoRA folders) with its strengths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraByName {
    pub name: String,
    pub strength: f32,
    #[serde(default)]
    pub text_strength: Option<f32>,
}

/// `POST /latent/v1/prepare` and `/latent/v1/generate`: a [`GenerateRequest`] with its
/// pictures and the LoRA set it runs with (the server keeps no LoRA state between jobs).
/// A hires fix upscaler model goes by name (`hires.model` = the file stem).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobBody {
    pub request: GenerateRequest,
    #[serde(default)]
    pub init_image: Option<String>,
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default)]
    pub loras: Vec<LoraByName>,
}

/// `POST /latent/v1/compare`: the solver lab's request with the LoRA set it runs with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareBody {
    pub base: GenerateRequest,
    pub solvers: Vec<String>,
    pub budgets: Vec<u32>,
    pub reference_solver: String,
    pub reference_steps: u32,
    #[serde(default)]
    pub loras: Vec<LoraByName>,
}

/// `POST /latent/v1/prepare`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    pub total_steps: u32,
    pub nfe: u32,
}

/// `GET/POST /latent/v1/model`'s answer.
pub fn model_json(file: &str, info: &ModelInfo) -> Value {
    json!({
        "file": file,
        "name": info.name,
        "family": info.family,
        "summary": info.summary,
        "dtype": format!("{:?}", info.dtype),
        "device": info.device,
        "default_size": [info.default_size.0, info.default_size.1],
        "default_guidance": info.default_guidance,
    })
}

/// The inverse of [`model_json`]; the device is said to be the server's.
pub fn model_info(v: &Value) -> Result<ModelInfo, String> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("the model answer has no {k}"))
    };
    let size = v
        .get("default_size")
        .and_then(Value::as_array)
        .ok_or("the model answer has no default_size")?;
    let side = |i: usize| size.get(i).and_then(Value::as_u64).map(|x| x as u32).ok_or("bad default_size");
    let dtype = match s("dtype")?.as_str() {
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        _ => DType::F32,
    };
    Ok(ModelInfo {
        name: s("name")?,
        family: s("family")?,
        summary: s("summary")?,
        dtype,
        device: s("device")?,
        default_size: (side(0)?, side(1)?),
        default_guidance: v.get("default_guidance").and_then(Value::as_f64).unwrap_or(7.0),
    })
}

/// One LoRA report as JSON.
pub fn report_json(r: &LoraReport) -> Value {
    json!({"name": r.name, "applied": r.applied, "total": r.total, "unmatched": r.unmatched})
}

/// The inverse of [`report_json`].
pub fn report(v: &Value) -> LoraReport {
    LoraReport {
        name: v.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        applied: v.get("applied").and_then(Value::as_u64).unwrap_or(0) as usize,
        total: v.get("total").and_then(Value::as_u64).unwrap_or(0) as usize,
        unmatched: v
            .get("unmatched")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default(),
    }
}

fn timings_json(t: &Timings) -> Value {
    json!({
        "text": t.text.as_secs_f64(), "denoise": t.denoise.as_secs_f64(), "vae": t.vae.as_secs_f64(),
        "previews": t.previews.as_secs_f64(), "total": t.total.as_secs_f64(),
        "nfe": t.nfe, "shallow_nfe": t.shallow_nfe,
    })
}

fn secs(v: &Value, k: &str) -> Duration {
    Duration::from_secs_f64(v.get(k).and_then(Value::as_f64).unwrap_or(0.0).clamp(0.0, 1e9))
}

fn timings(v: &Value) -> Timings {
    Timings {
        text: secs(v, "text"),
        denoise: secs(v, "denoise"),
        vae: secs(v, "vae"),
        previews: secs(v, "previews"),
        total: secs(v, "total"),
        nfe: v.get("nfe").and_then(Value::as_u64).unwrap_or(0) as u32,
        shallow_nfe: v.get("shallow_nfe").and_then(Value::as_u64).unwrap_or(0) as u32,
    }
}

/// An engine event as a server-sent event: its name and JSON data (with the job's `id`
/// where it has one). Previews and results carry their picture; `None` for an event whose
/// picture cannot be encoded.
pub fn event_sse(e: &Event) -> Option<(&'static str, Value)> {
    let (name, mut data) = match e {
        Event::ModelLoaded { info } => ("model_loaded", model_json("", info)),
        Event::LorasApplied { reports } => (
            "loras_applied",
            json!({"reports": reports.iter().map(report_json).collect::<Vec<_>>()}),
        ),
        Event::Started { total_steps, nfe, .. } => ("started", json!({"total_steps": total_steps, "nfe": nfe})),
        Event::Progress {
            step,
            total_steps,
            step_time,
            ..
        } => (
            "progress",
            json!({"step": step, "total_steps": total_steps, "step_time": step_time.as_secs_f64()}),
        ),
        Event::Preview { step, image, .. } => ("preview", json!({"step": step, "image": png_b64(image, "").ok()?})),
        Event::Finished {
            image, metadata, timings, ..
        } => (
            "finished",
            json!({"image": png_b64(image, metadata).ok()?, "metadata": metadata, "timings": timings_json(timings)}),
        ),
        Event::CompareCell { cell, .. } => (
            "compare_cell",
            json!({"solver": cell.solver, "budget": cell.budget, "steps": cell.steps, "nfe": cell.nfe,
                   "seconds": cell.time.as_secs_f64(), "latent_rel_l2": cell.latent_rel_l2, "psnr": cell.psnr,
                   "metadata": cell.metadata,
                   "image": cell.image.as_ref().and_then(|i| png_b64(i, &cell.metadata).ok())}),
        ),
        Event::Cancelled { at_step, .. } => ("cancelled", json!({"at_step": at_step})),
        Event::Failed { error, .. } => ("failed", json!({"error": error})),
        Event::Warning { message, .. } => ("warning", json!({"message": message})),
    };
    if let (Some(id), Some(o)) = (e.job(), data.as_object_mut()) {
        o.insert("id".into(), json!(id));
    }
    Some((name, data))
}

/// The inverse of [`event_sse`] for one job's events, given the id the client knows the job by.
pub fn job_event(name: &str, data: &Value, id: u64) -> Result<Event, String> {
    let u = |k: &str| data.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
    let text = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let picture = || picture_b64(&text("image"), u64::MAX);
    Ok(match name {
        "started" => Event::Started {
            id,
            total_steps: u("total_steps"),
            nfe: u("nfe"),
        },
        "progress" => Event::Progress {
            id,
            step: u("step"),
            total_steps: u("total_steps"),
            step_time: secs(data, "step_time"),
        },
        "preview" => Event::Preview {
            id,
            step: u("step"),
            image: picture()?,
        },
        "finished" => Event::Finished {
            id,
            image: picture()?,
            metadata: text("metadata"),
            timings: timings(data.get("timings").unwrap_or(&Value::Null)),
            latents: None,
        },
        // JSON has no NaN or infinity: a missing distance is NaN, a missing PSNR identical.
        "compare_cell" => Event::CompareCell {
            id,
            cell: Box::new(latent_engine::protocol::CompareCell {
                solver: text("solver"),
                budget: u("budget"),
                steps: u("steps"),
                nfe: u("nfe"),
                time: secs(data, "seconds"),
                latent_rel_l2: data.get("latent_rel_l2").and_then(Value::as_f64).unwrap_or(f64::NAN),
                psnr: data.get("psnr").and_then(Value::as_f64).unwrap_or(f64::INFINITY),
                image: match data.get("image").and_then(Value::as_str) {
                    Some(b) => Some(picture_b64(b, u64::MAX)?),
                    None => None,
                },
                metadata: text("metadata"),
            }),
        },
        "cancelled" => Event::Cancelled { id, at_step: u("at_step") },
        "failed" => Event::Failed {
            id: Some(id),
            error: text("error"),
        },
        "warning" => Event::Warning {
            id: Some(id),
            message: text("message"),
        },
        other => return Err(format!("unknown event {other:?}")),
    })
}
