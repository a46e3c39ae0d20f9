//! What the window remembers: [`Settings`] (serde, persisted across restarts) and
//! [`Session`] (jobs, textures, messages; never persisted).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use latent_engine::lora::extract_prompt_tags;
use latent_engine::metadata::Parameters;
use latent_engine::protocol::{DType, Emphasis, GenerateRequest, ImageRgb8, JobId, LoraSpec, ModelInfo, Timings};
use serde::{Deserialize, Serialize};

/// Light, dark, or whatever the system says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThemeChoice {
    #[default]
    System,
    Light,
    Dark,
}

/// Whether the next image reuses the seed or draws a new one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeedMode {
    Fixed,
    #[default]
    Random,
}

/// Which file dialog to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialog {
    ModelFile,
    ModelFolder,
    Image,
    Lora,
    ModelDir,
    LoraDir,
    OutputDir,
    /// A picture to start image to image from.
    InitImage,
    /// Inpainting's mask (white = repaint).
    Mask,
}

impl Dialog {
    /// What the dialog (or the path field standing in for it) is titled.
    pub fn title(self) -> &'static str {
        match self {
            Dialog::ModelFile => "Open a model file",
            Dialog::ModelFolder => "Open a diffusers folder",
            Dialog::Image => "Restore settings from an image",
            Dialog::Lora => "Add a LoRA",
            Dialog::ModelDir => "Add a model folder",
            Dialog::LoraDir => "Add a LoRA folder",
            Dialog::OutputDir => "Choose the output folder",
            Dialog::InitImage => "Open a picture to start from",
            Dialog::Mask => "Open a mask (white = repaint)",
        }
    }

    /// It picks a folder rather than a file.
    pub fn wants_folder(self) -> bool {
        matches!(self, Dialog::ModelFolder | Dialog::ModelDir | Dialog::LoraDir | Dialog::OutputDir)
    }

    /// The file name endings it picks (files only).
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Dialog::ModelFile => &["safetensors", "gguf"],
            Dialog::Lora => &["safetensors"],
            Dialog::Image => &["png"],
            Dialog::InitImage | Dialog::Mask => &["png", "jpg", "jpeg", "webp", "bmp"],
            _ => &[],
        }
    }
}

/// What Generate starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GenMode {
    /// Text to image.
    #[default]
    Text,
    /// Image to image from the init picture.
    Image,
    /// Inpainting: repaint where the mask is painted.
    Inpaint,
}

/// The picture image to image starts from (kept for the session, not across restarts).
pub struct InitImage {
    pub image: Arc<ImageRgb8>,
    /// Where it came from, for the panel.
    pub name: String,
    pub texture: Option<egui::TextureHandle>,
    /// Inpainting's mask at the picture's size: 255 = repaint, 0 = keep.
    pub mask: Vec<u8>,
    /// The mask drawn over the picture; rebuilt when `mask_changed`.
    pub mask_texture: Option<egui::TextureHandle>,
    pub mask_changed: bool,
    /// "Only masked": the region the engine will work on, for the settings it was found with
    /// (blur, padding, width, height); cleared when the mask changes.
    pub region: Option<([u32; 4], Option<latent_engine::pipeline::masked_area::Region>)>,
}

impl InitImage {
    pub fn new(image: Arc<ImageRgb8>, name: String) -> Self {
        let n = (image.width * image.height) as usize;
        Self {
            image,
            name,
            texture: None,
            mask: vec![0; n],
            mask_texture: None,
            mask_changed: true,
            region: None,
        }
    }

    /// Paints (or erases) a disc of `radius` pixels at picture coordinates `(x, y)`.
    pub fn stamp(&mut self, x: f32, y: f32, radius: f32, erase: bool) {
        let (w, h) = (self.image.width as i64, self.image.height as i64);
        let r = radius.max(0.5);
        let (x0, x1) = (((x - r).floor() as i64).max(0), ((x + r).ceil() as i64).min(w - 1));
        let (y0, y1) = (((y - r).floor() as i64).max(0), ((y + r).ceil() as i64).min(h - 1));
        for py in y0..=y1 {
            for px in x0..=x1 {
                let (dx, dy) = (px as f32 + 0.5 - x, py as f32 + 0.5 - y);
                if dx * dx + dy * dy <= r * r {
                    self.mask[(py * w + px) as usize] = if erase { 0 } else { 255 };
                }
            }
        }
        self.mask_changed = true;
    }

    /// Share of the picture to repaint.
    pub fn painted(&self) -> f32 {
        self.mask.iter().filter(|&&m| m > 0).count() as f32 / self.mask.len().max(1) as f32
    }

    /// The mask as an RGB picture (white = repaint).
    pub fn mask_image(&self) -> ImageRgb8 {
        ImageRgb8 {
            width: self.image.width,
            height: self.image.height,
            pixels: self.mask.iter().flat_map(|&m| [m, m, m]).collect(),
        }
    }
}

/// The mask editor's brush.
#[derive(Clone, Debug, PartialEq)]
pub struct Brush {
    /// Radius in picture pixels.
    pub radius: f32,
    pub erase: bool,
    /// Where the last stroke ended (picture coordinates), to join a drag's dabs.
    pub last: Option<(f32, f32)>,
}

impl Default for Brush {
    fn default() -> Self {
        Self {
            radius: 12.0,
            erase: false,
            last: None,
        }
    }
}

/// The sliders: everything one generation needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    pub prompt: String,
    pub negative: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f64,
    pub cfg_rescale: f64,
    pub solver: String,
    pub schedule: String,
    pub seed: u64,
    pub seed_mode: SeedMode,
    /// Images per click (seeds seed, seed+1, ...).
    pub batch: u32,
    pub clip_skip: u32,
    /// Feature cache interval (1 = off).
    pub feature_cache: u32,
    /// Token merging ratio (0 = off).
    pub token_merge: f64,
    /// How prompt weights act (A1111's "Emphasis").
    #[serde(default)]
    pub emphasis: Emphasis,
    pub mode: GenMode,
    /// Image to image: denoising strength.
    pub strength: f64,
    /// Image to image: how a picture of another size is fitted.
    pub resize_mode: crate::resize::ResizeMode,
    /// Inpainting: blur of the mask the result is pasted over the picture with.
    pub mask_blur: u32,
    /// Inpainting: the whole picture or only the mask's neighbourhood (A1111's "Only masked").
    pub inpaint_area: latent_engine::protocol::InpaintArea,
    pub masked_padding: u32,
    pub masked_content: latent_engine::protocol::MaskedContent,
    /// Text to image: the hires fix and its settings.
    pub hires: bool,
    pub hires_scale: f64,
    /// 0 = the steps of the first pass.
    pub hires_steps: u32,
    pub hires_strength: f64,
    pub hires_upscaler: latent_engine::protocol::HiresUpscaler,
    /// The upscaler model file with `HiresUpscaler::Model`.
    pub hires_model: Option<PathBuf>,
    /// Spend this many network evaluations instead of a step count: the steps become the
    /// most the solver can take within it (None = the Steps slider).
    pub nfe_budget: Option<u32>,
}

impl Default for Params {
    fn default() -> Self {
        let r = GenerateRequest::default();
        Self {
            prompt: String::new(),
            negative: String::new(),
            width: r.width,
            height: r.height,
            steps: r.steps,
            cfg_scale: r.cfg_scale,
            cfg_rescale: 0.0,
            solver: "dpm++2m".into(),
            schedule: "karras".into(),
            seed: 0,
            seed_mode: SeedMode::Random,
            batch: 1,
            clip_skip: 1,
            feature_cache: 1,
            token_merge: 0.0,
            emphasis: Emphasis::Original,
            mode: GenMode::Text,
            strength: 0.75,
            resize_mode: crate::resize::ResizeMode::Just,
            mask_blur: 4,
            inpaint_area: latent_engine::protocol::InpaintArea::Whole,
            masked_padding: 32,
            masked_content: latent_engine::protocol::MaskedContent::Original,
            hires: false,
            hires_scale: 2.0,
            hires_steps: 0,
            hires_strength: 0.7,
            hires_upscaler: latent_engine::protocol::HiresUpscaler::Latent,
            hires_model: None,
            nfe_budget: None,
        }
    }
}

impl Params {
    /// The request for one image with this seed.
    pub fn request(&self, seed: u64) -> GenerateRequest {
        let mut r = GenerateRequest {
            prompt: self.prompt.clone(),
            negative: self.negative.clone(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            seed,
            solver: self.solver.clone(),
            schedule: self.schedule.clone(),
            eta: None,
            cfg_rescale: self.cfg_rescale,
            cfg_until: 1.0,
            clip_skip: self.clip_skip,
            preview_every: 1,
            feature_cache: self.feature_cache,
            token_merge: self.token_merge,
            emphasis: self.emphasis,
            mask_blur: self.mask_blur,
            inpaint_area: self.inpaint_area,
            masked_padding: self.masked_padding,
            masked_content: self.masked_content,
            hires: (self.hires && self.mode == GenMode::Text).then_some(latent_engine::protocol::Hires {
                scale: self.hires_scale,
                steps: self.hires_steps,
                strength: self.hires_strength,
                upscaler: self.hires_upscaler,
                model: self.hires_model.clone(),
            }),
            ..GenerateRequest::default()
        };
        let _ = self.apply_budget(&mut r);
        r
    }

    /// With an NFE budget, sets the request's steps to the most its solver can take within
    /// it (image to image's strength counted once the picture is in the request); says why
    /// when the budget buys no step.
    pub fn apply_budget(&self, r: &mut GenerateRequest) -> Result<(), String> {
        let Some(budget) = self.nfe_budget else { return Ok(()) };
        match latent_engine::pipeline::steps_for_budget(r, budget) {
            Some(steps) => {
                r.steps = steps;
                Ok(())
            }
            None => Err(format!(
                "An NFE budget of {budget} buys no step of {}: one costs {}. Raise the budget or lower CFG to 1.",
                r.solver,
                latent_engine::pipeline::request_nfe(&GenerateRequest { steps: 1, ..r.clone() }).unwrap_or(0)
            )),
        }
    }

    /// Takes every setting an image's A1111 `parameters` text carries; the seed becomes fixed
    /// so the same image can be made again.
    pub fn restore(&mut self, p: &Parameters) {
        let r = p.to_request(&self.request(self.seed));
        // The image's own step count, not a budget's.
        self.nfe_budget = None;
        self.prompt = r.prompt;
        self.negative = r.negative;
        self.width = r.width;
        self.height = r.height;
        self.steps = r.steps;
        self.cfg_scale = r.cfg_scale;
        self.cfg_rescale = r.cfg_rescale;
        self.solver = r.solver;
        self.schedule = r.schedule;
        self.seed = r.seed;
        self.seed_mode = SeedMode::Fixed;
        self.clip_skip = r.clip_skip;
        self.feature_cache = r.feature_cache;
        self.token_merge = r.token_merge;
        self.emphasis = r.emphasis;
        if p.get("Denoising strength").is_some() {
            self.strength = r.strength;
        }
        self.mask_blur = r.mask_blur;
        (self.inpaint_area, self.masked_padding, self.masked_content) = (r.inpaint_area, r.masked_padding, r.masked_content);
        self.hires = r.hires.is_some();
        if let Some(h) = &r.hires {
            (self.hires_scale, self.hires_steps, self.hires_strength, self.hires_upscaler) = (h.scale, h.steps, h.strength, h.upscaler);
            // A model comes by name; the window finds its file (`App::restore`).
            self.hires_model = h.model.clone();
        }
    }
}

/// One LoRA in the panel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraEntry {
    pub path: PathBuf,
    pub strength: f32,
    pub enabled: bool,
}

impl LoraEntry {
    /// The name `<lora:name>` tags use: the file stem.
    pub fn name(&self) -> String {
        Self::name_of(&self.path)
    }

    /// The tag name of a LoRA file.
    pub fn name_of(path: &Path) -> String {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// Everything persisted across restarts (eframe storage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The model to open at start; `None` = the embedded default (or the "open a model" state).
    pub model: Option<PathBuf>,
    pub recent_models: Vec<PathBuf>,
    /// Folders scanned for checkpoints (A1111 and ComfyUI install roots are recognised).
    pub model_dirs: Vec<PathBuf>,
    pub lora_dirs: Vec<PathBuf>,
    pub output_dir: PathBuf,
    pub dtype: DType,
    /// VAE tiling at the next load: true = automatic (tile only when memory is short).
    pub vae_auto_tiling: bool,
    /// A VAE file to decode with instead of the checkpoint's own.
    pub vae: Option<PathBuf>,
    /// A tiny decoder (TAESD) for the step previews.
    pub tiny_decoder: Option<PathBuf>,
    /// A whole checkpoint lending text encoders and VAE to UNet-only files.
    pub components: Option<PathBuf>,
    pub params: Params,
    pub loras: Vec<LoraEntry>,
    /// Regenerate when a slider moves.
    pub live: bool,
    pub theme: ThemeChoice,
    /// Magnified images are drawn with sharp pixels (nearest neighbour) rather than smoothed:
    /// the embedded model's 64x64 pictures stay crisp on a large canvas.
    pub sharp_pixels: bool,
    /// Native size of the model loaded last: a model with another one (SD 1.5 -> SDXL, or
    /// the 64x64 embedded model) sets the size sliders to its own; the same one keeps the
    /// user's size.
    pub native_size: Option<(u32, u32)>,
    /// The guidance scale the model loaded last is made for: a model made for another one
    /// (the embedded model's 3, a Turbo's 1, SD's 7) sets the CFG slider to it; the same one
    /// keeps the user's value.
    pub native_guidance: Option<f64>,
    /// The server address last connected to (File > Connect to server).
    pub server_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            recent_models: vec![],
            model_dirs: vec![],
            lora_dirs: vec![],
            output_dir: default_output_dir(),
            dtype: DType::F32,
            vae_auto_tiling: true,
            vae: None,
            tiny_decoder: None,
            components: None,
            params: Params::default(),
            loras: vec![],
            live: false,
            theme: ThemeChoice::System,
            sharp_pixels: true,
            server_url: String::new(),
            native_size: None,
            native_guidance: None,
        }
    }
}

/// `~/Pictures/Latent Studio` (or the current folder when there is no home).
pub fn default_output_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from);
    match home {
        Some(h) => h.join("Pictures").join("Latent Studio"),
        None => PathBuf::from("latent-studio-output"),
    }
}

impl Settings {
    /// Remembers a model at the top of the recent list (at most 10).
    pub fn remember_model(&mut self, path: &Path) {
        self.recent_models.retain(|p| p != path);
        self.recent_models.insert(0, path.to_path_buf());
        self.recent_models.truncate(10);
        self.model = Some(path.to_path_buf());
    }

    /// How the canvas samples images it magnifies (shrunk ones are always smoothed).
    pub fn canvas_filter(&self) -> egui::TextureOptions {
        if self.sharp_pixels {
            egui::TextureOptions {
                magnification: egui::TextureFilter::Nearest,
                ..egui::TextureOptions::LINEAR
            }
        } else {
            egui::TextureOptions::LINEAR
        }
    }

    /// The LoRA set the engine should merge: enabled panel entries.
    pub fn lora_specs(&self) -> Vec<LoraSpec> {
        self.loras
            .iter()
            .filter(|l| l.enabled)
            .map(|l| LoraSpec::new(l.path.clone(), l.strength))
            .collect()
    }
}

/// Keeps the prompt's `<lora:name:w>` tags and the LoRA panel in agreement after the prompt
/// was edited: a tag naming a known file (panel entry or one of `known`) puts it in the panel,
/// enabled, at the tag's strength. Returns whether the panel changed.
pub fn panel_from_prompt(prompt: &str, loras: &mut Vec<LoraEntry>, known: &[PathBuf]) -> bool {
    let (_, tags) = extract_prompt_tags(prompt);
    let mut changed = false;
    for (name, w) in tags {
        if let Some(e) = loras.iter_mut().find(|e| e.name().eq_ignore_ascii_case(&name)) {
            if e.strength != w || !e.enabled {
                e.strength = w;
                e.enabled = true;
                changed = true;
            }
        } else if let Some(p) = known
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case(&name)))
        {
            loras.push(LoraEntry {
                path: p.clone(),
                strength: w,
                enabled: true,
            });
            changed = true;
        }
    }
    changed
}

/// Sets the LoRA panel to the set an image was made with, so that generating again gives the
/// same image: its `Lora weights`/`Lora hashes` entries and its prompt's tags are enabled (at
/// their strengths), every other entry is disabled (kept in the panel, to tick again). A LoRA
/// it names that is neither in the panel nor among `known` files is returned, described for
/// the user.
pub fn panel_from_image(p: &Parameters, loras: &mut Vec<LoraEntry>, known: &[PathBuf]) -> Vec<String> {
    let uses = p.loras();
    let (_, tags) = extract_prompt_tags(&p.prompt);
    let named = |e: &LoraEntry, n: &str| e.name().eq_ignore_ascii_case(n);
    for e in loras.iter_mut() {
        let used = uses.iter().find(|u| named(e, &u.name));
        e.enabled = used.is_some() || tags.iter().any(|(n, _)| named(e, n));
        if let Some(w) = used.and_then(|u| u.weight) {
            e.strength = w;
        }
    }
    let mut missing = vec![];
    for u in &uses {
        if loras.iter().any(|e| named(e, &u.name)) {
            continue;
        }
        match known
            .iter()
            .find(|k| k.file_stem().is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case(&u.name)))
        {
            Some(path) => loras.push(LoraEntry {
                path: path.clone(),
                strength: u.weight.unwrap_or(1.0),
                enabled: true,
            }),
            None => missing.push(match &u.hash {
                Some(h) => format!("{} (hash {h})", u.name),
                None => u.name.clone(),
            }),
        }
    }
    panel_from_prompt(&p.prompt, loras, known);
    missing
}

/// The other direction: after a panel slider moved or an entry was disabled/removed, rewrite
/// (or drop) that LoRA's tag in the prompt. `entry` is `None` when it was removed.
pub fn prompt_from_panel(prompt: &str, name: &str, entry: Option<&LoraEntry>) -> String {
    let mut out = String::with_capacity(prompt.len());
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(end) = rest[start..].find('>') else { break };
        let body = &rest[start + 6..start + end];
        let tag_name = body.split(':').next().unwrap_or_default().trim();
        out.push_str(&rest[..start]);
        if tag_name.eq_ignore_ascii_case(name) {
            match entry {
                Some(e) if e.enabled => out.push_str(&format!("<lora:{tag_name}:{}>", format_strength(e.strength))),
                _ => {
                    // Drop the tag and one space it leaves doubled.
                    let after = &rest[start + end + 1..];
                    if out.ends_with(' ') && (after.is_empty() || after.starts_with([' ', ','])) {
                        out.pop();
                    }
                }
            }
        } else {
            out.push_str(&rest[start..start + end + 1]);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// `0.8`, `1`, `0.65`: the shortest text that reads back as the slider's value (2 decimals).
pub fn format_strength(v: f32) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" { "0".into() } else { s.to_string() }
}

/// The loaded model as the window sees it.
#[derive(Clone, Debug, Default)]
pub enum ModelState {
    /// Nothing loaded: the window shows how to open one.
    #[default]
    None,
    Loading {
        path: PathBuf,
        since: Instant,
        /// What keeps serving if this load fails.
        previous: Option<(PathBuf, ModelInfo)>,
    },
    Loaded {
        path: PathBuf,
        info: ModelInfo,
    },
}

/// A job the window has sent and not yet seen end.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: JobId,
    pub request: GenerateRequest,
    pub total_steps: u32,
    pub nfe: u32,
    pub step: u32,
    pub started: Option<Instant>,
    pub step_times: Vec<Duration>,
    /// An upscale job's upscaler name (its steps are tiles); `None` for a generation.
    pub upscaler: Option<String>,
}

impl Job {
    /// Steps per second over the steps so far.
    pub fn rate(&self) -> Option<f64> {
        let t: Duration = self.step_times.iter().sum();
        (!self.step_times.is_empty() && t > Duration::ZERO).then(|| self.step_times.len() as f64 / t.as_secs_f64())
    }
    /// Seconds left at the current rate.
    pub fn eta(&self) -> Option<f64> {
        let rate = self.rate()?;
        Some(self.total_steps.saturating_sub(self.step) as f64 / rate)
    }
}

/// One intermediate preview kept for the step strip.
pub struct StripFrame {
    pub step: u32,
    pub texture: egui::TextureHandle,
}

/// A finished image in the history.
pub struct HistoryItem {
    /// The job that made it (this session's images).
    pub job: Option<JobId>,
    /// Where it was saved (set once the file thread reports).
    pub path: Option<PathBuf>,
    pub parameters: String,
    pub texture: egui::TextureHandle,
    pub size: [u32; 2],
    /// Full pixels (for the clipboard); dropped for older items, which reload from disk.
    pub full: Option<Arc<ImageRgb8>>,
    pub timings: Option<Timings>,
}

/// One line of the timing log.
#[derive(Clone, Debug)]
pub struct TimingEntry {
    pub request: GenerateRequest,
    pub timings: Timings,
}

/// How serious a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// A message shown above the canvas until dismissed.
#[derive(Clone, Debug)]
pub struct Message {
    pub level: Level,
    pub text: String,
    pub at: Instant,
}

/// Which image the canvas shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shown {
    /// The running job's latest preview, or the last result.
    #[default]
    Live,
    /// A frame of the step strip.
    Strip(usize),
    /// A history item.
    History(usize),
}

/// Everything that lives only while the window is open.
#[derive(Default)]
pub struct Session {
    pub model: ModelState,
    /// Jobs sent, oldest first; the first is running once Started arrives.
    pub jobs: VecDeque<Job>,
    /// The current image's previews, in step order.
    pub strip: Vec<StripFrame>,
    /// The latest preview or result of the current job.
    pub canvas: Option<(egui::TextureHandle, [u32; 2])>,
    pub shown: Shown,
    pub history: Vec<HistoryItem>,
    pub messages: Vec<Message>,
    /// Time and NFE of the last finished image.
    pub last: Option<Timings>,
    /// The seed of the last image sent (for "reuse last").
    pub last_seed: Option<u64>,
    /// Live mode: the request last sent and when the sliders last changed.
    pub live_sent: Option<GenerateRequest>,
    /// Jobs live mode cancelled because a setting changed (their cancel is not news).
    pub live_cancelled: std::collections::HashSet<JobId>,
    pub live_changed: Option<Instant>,
    /// Files found in the model and LoRA folders.
    pub found_models: Vec<PathBuf>,
    /// What the model picker says of a found model before it is opened (GGUF weight types,
    /// "UNet only"), read from headers once per scan.
    pub model_notes: std::collections::HashMap<PathBuf, String>,
    pub found_loras: Vec<PathBuf>,
    /// VAE files in the model folders' `VAE`/`vae` folders.
    pub found_vaes: Vec<PathBuf>,
    /// Upscaler models (ESRGAN family) in the model folders' `ESRGAN`, `RealESRGAN` and
    /// `upscale_models` folders.
    pub found_upscalers: Vec<PathBuf>,
    /// Tiny decoders in the model folders' `VAE-approx`/`vae_approx` folders.
    pub found_tiny_decoders: Vec<PathBuf>,
    /// Textual-inversion embeddings in the model folders' `embeddings` folders (names).
    pub found_embeddings: Vec<String>,
    /// Image to image's picture (and inpainting's mask).
    pub init: Option<InitImage>,
    pub show_mask_editor: bool,
    /// Pixels the Extend buttons add to the picture (outpainting); 0 means the default 64.
    pub outpaint_by: u32,
    pub brush: Brush,
    /// Short hashes of VAE and components files computed so far (restoring an image by
    /// `VAE hash`, `Components hash`).
    pub vae_hashes: HashMap<PathBuf, String>,
    /// The last finished image (for the clipboard).
    pub last_image: Option<Arc<ImageRgb8>>,
    /// LoRA name -> "applied/total layers" from the engine's last report.
    pub lora_reports: HashMap<String, String>,
    /// Per-stage times of this session's images, oldest first (View > Timing log).
    pub timing_log: Vec<TimingEntry>,
    pub show_timing_log: bool,
    pub show_settings: bool,
    /// Renderer the window runs on ("wgpu (Vulkan)", "glow", "test").
    pub renderer: String,
    /// Resident memory of the process for the status bar (refreshed by the app each frame,
    /// at most once a second; `None` when hidden or unknown).
    pub ram: Option<u64>,
    /// The path field shown in place of a file dialog that could not open.
    pub path_field: Option<PathField>,
    /// File > Connect to server: the dialog and the connection.
    pub remote: RemoteState,
    /// View > Solver lab: its settings, the running comparison and its cells.
    pub lab: LabState,
}

/// The solver lab: solvers compared at equal NFE on the main panels' prompt and seed.
pub struct LabState {
    pub show: bool,
    /// Solver names ticked, in the order of `latent-studio solvers`.
    pub solvers: Vec<String>,
    /// NFE budgets as typed ("8, 16, 32").
    pub budgets: String,
    pub reference_solver: String,
    pub reference_steps: u32,
    /// The comparison running now, and its request.
    pub job: Option<JobId>,
    pub sent: Option<latent_engine::protocol::CompareRequest>,
    /// Steps done of all its runs, and their total.
    pub progress: (u32, u32),
    /// Its cells so far, each with its picture's texture.
    pub cells: Vec<(latent_engine::protocol::CompareCell, Option<egui::TextureHandle>)>,
    /// The budgets and solvers the cells belong to (the grid's columns and rows).
    pub shown: (Vec<String>, Vec<u32>),
    pub reference: Option<egui::TextureHandle>,
    /// The finished comparison as sent and its reference picture with its parameters (Save).
    pub done: Option<(latent_engine::protocol::CompareRequest, Arc<ImageRgb8>, String)>,
    pub error: Option<String>,
}

impl Default for LabState {
    fn default() -> Self {
        Self {
            show: false,
            solvers: ["euler", "heun", "dpm++2m", "unipc"].map(String::from).to_vec(),
            budgets: "8, 16, 32".into(),
            reference_solver: "dpm++2m".into(),
            reference_steps: 100,
            job: None,
            sent: None,
            progress: (0, 0),
            cells: vec![],
            shown: (vec![], vec![]),
            reference: None,
            done: None,
            error: None,
        }
    }
}

impl LabState {
    /// The typed budgets, or why they cannot be read.
    pub fn parsed_budgets(&self) -> Result<Vec<u32>, String> {
        let list: Result<Vec<u32>, String> = self
            .budgets
            .split([',', ' '])
            .filter(|t| !t.trim().is_empty())
            .map(|t| {
                t.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| format!("{t:?} is not an NFE budget (1 to 10000)"))
            })
            .collect();
        let list = list?;
        if list.is_empty() {
            return Err("Give at least one NFE budget, e.g. 8, 16, 32".into());
        }
        Ok(list)
    }
}

/// The window's engine on another machine (`latent-studio serve`), or the dialog that
/// connects to one.
#[derive(Default)]
pub struct RemoteState {
    /// The Connect window is open.
    pub show: bool,
    pub url: String,
    /// A bearer token (or put `user:password@` in the address); kept for this session only.
    pub token: String,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// An attempt under way (the listing comes from a thread).
    pub pending: Option<crossbeam_channel::Receiver<Result<(crate::remote::Server, crate::remote::Listing), String>>>,
    /// The server the window's jobs run on now, and what it offers.
    pub connected: Option<(crate::remote::Server, crate::remote::Listing)>,
}

/// A typed path standing in for a file dialog (no desktop portal, or dialogs off).
#[derive(Clone, Debug, PartialEq)]
pub struct PathField {
    pub kind: Dialog,
    pub text: String,
    /// Why there is no dialog, said in the field's window.
    pub why: String,
    /// What was wrong with the last path tried.
    pub error: Option<String>,
}

impl PathField {
    pub fn new(kind: Dialog, start: Option<&Path>, why: impl Into<String>) -> Self {
        let text = start
            .filter(|d| d.is_dir())
            .map(|d| {
                let mut t = d.display().to_string();
                if !t.ends_with(std::path::MAIN_SEPARATOR) {
                    t.push(std::path::MAIN_SEPARATOR);
                }
                t
            })
            .unwrap_or_default();
        Self {
            kind,
            text,
            why: why.into(),
            error: None,
        }
    }

    /// The path typed, `~` expanded.
    pub fn path(&self) -> PathBuf {
        expand_home(self.text.trim())
    }

    /// Checks the typed path is something this field picks: an existing folder, or an
    /// existing file with one of its endings.
    pub fn check(&self) -> Result<PathBuf, String> {
        let path = self.path();
        if self.text.trim().is_empty() {
            return Err("Type a path first.".into());
        }
        if !path.exists() {
            return Err(format!("{} does not exist.", path.display()));
        }
        if self.kind.wants_folder() {
            if !path.is_dir() {
                return Err(format!("{} is not a folder.", path.display()));
            }
        } else {
            if path.is_dir() {
                return Err(format!("{} is a folder: type a file in it.", path.display()));
            }
            let exts = self.kind.extensions();
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            if !exts.is_empty() && !exts.contains(&ext.as_str()) {
                return Err(format!("{} is not a .{} file.", path.display(), exts.join(" or .")));
            }
        }
        Ok(path)
    }

    /// What the typed text can complete to: folders (shown with a trailing separator) and,
    /// for a file field, files with its endings, in the typed folder whose names start with
    /// the typed rest (case-insensitive), sorted, at most `limit`.
    pub fn completions(&self, limit: usize) -> Vec<String> {
        let text = self.text.trim_start();
        let sep = std::path::MAIN_SEPARATOR;
        let (dir_text, prefix) = match text.rfind(['/', sep]) {
            Some(i) => (&text[..=i], &text[i + 1..]),
            None => ("", text),
        };
        let dir = if dir_text.is_empty() {
            PathBuf::from(".")
        } else {
            expand_home(dir_text)
        };
        let Ok(entries) = std::fs::read_dir(&dir) else { return vec![] };
        let prefix = prefix.to_lowercase();
        let exts = self.kind.extensions();
        let mut out: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.to_lowercase().starts_with(&prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                    return None;
                }
                let is_dir = e.path().is_dir();
                if is_dir {
                    return Some(format!("{dir_text}{name}{sep}"));
                }
                let ext = Path::new(&name).extension().map(|x| x.to_string_lossy().to_ascii_lowercase());
                (!self.kind.wants_folder() && ext.is_some_and(|x| exts.contains(&x.as_str()))).then(|| format!("{dir_text}{name}"))
            })
            .collect();
        out.sort_by_key(|a| a.to_lowercase());
        out.truncate(limit);
        out
    }
}

/// `~/x` as the home folder's `x`.
fn expand_home(text: &str) -> PathBuf {
    match (text.strip_prefix('~'), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with(['/', std::path::MAIN_SEPARATOR]) => {
            PathBuf::from(home).join(rest.trim_start_matches(['/', std::path::MAIN_SEPARATOR]))
        }
        _ => PathBuf::from(text),
    }
}

impl Session {
    /// Adds a message (the same text twice in a row is shown once).
    pub fn say(&mut self, level: Level, text: impl Into<String>) {
        let text = text.into();
        if self.messages.last().is_some_and(|m| m.text == text) {
            return;
        }
        self.messages.push(Message {
            level,
            text,
            at: Instant::now(),
        });
        if self.messages.len() > 6 {
            self.messages.remove(0);
        }
    }
    /// The job currently running (Started seen), if any.
    pub fn running(&self) -> Option<&Job> {
        self.jobs.front().filter(|j| j.started.is_some())
    }
    pub fn is_busy(&self) -> bool {
        !self.jobs.is_empty()
    }
}

/// A seed A1111 and ComfyUI both accept (below 2^32), from the clock and a counter.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() & 0xffff_ffff
}

/// The last part of a path, for labels.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A path's file name without its extension (how A1111 names upscaler models).
pub fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, strength: f32, enabled: bool) -> LoraEntry {
        LoraEntry {
            path: PathBuf::from(format!("/loras/{name}.safetensors")),
            strength,
            enabled,
        }
    }

    #[test]
    fn the_path_field_checks_and_completes() {
        let root = std::env::temp_dir().join(format!("latent-path-field-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("Models")).expect("dir");
        std::fs::create_dir_all(root.join("loras")).expect("dir");
        std::fs::create_dir_all(root.join(".hidden")).expect("dir");
        std::fs::write(root.join("model.safetensors"), b"x").expect("file");
        std::fs::write(root.join("notes.txt"), b"x").expect("file");
        let field = |kind, text: String| PathField {
            kind,
            text,
            why: String::new(),
            error: None,
        };
        let r = root.display().to_string();
        let sep = std::path::MAIN_SEPARATOR;
        // Folders (case-insensitive prefix, hidden ones only when asked) and matching files.
        let f = field(Dialog::ModelFile, format!("{r}{sep}m"));
        assert_eq!(
            f.completions(10),
            vec![format!("{r}{sep}model.safetensors"), format!("{r}{sep}Models{sep}")]
        );
        let f = field(Dialog::ModelDir, format!("{r}{sep}"));
        assert_eq!(
            f.completions(10),
            vec![format!("{r}{sep}loras{sep}"), format!("{r}{sep}Models{sep}")]
        );
        assert_eq!(
            field(Dialog::ModelDir, format!("{r}{sep}.h")).completions(10),
            vec![format!("{r}{sep}.hidden{sep}")]
        );
        assert_eq!(field(Dialog::ModelDir, format!("{r}{sep}")).completions(1).len(), 1);
        assert!(field(Dialog::ModelDir, format!("{r}{sep}nowhere{sep}x")).completions(10).is_empty());
        // What each kind accepts.
        assert_eq!(
            field(Dialog::ModelFile, format!("{r}{sep}model.safetensors")).check(),
            Ok(root.join("model.safetensors"))
        );
        assert!(
            field(Dialog::ModelFile, format!("{r}{sep}notes.txt"))
                .check()
                .err()
                .unwrap_or_default()
                .contains("not a .safetensors or .gguf file")
        );
        assert!(
            field(Dialog::ModelFile, r.clone())
                .check()
                .err()
                .unwrap_or_default()
                .contains("is a folder")
        );
        assert!(
            field(Dialog::ModelDir, format!("{r}{sep}model.safetensors"))
                .check()
                .err()
                .unwrap_or_default()
                .contains("not a folder")
        );
        assert!(
            field(Dialog::OutputDir, format!("{r}{sep}gone"))
                .check()
                .err()
                .unwrap_or_default()
                .contains("does not exist")
        );
        assert!(field(Dialog::OutputDir, "  ".into()).check().is_err());
        assert_eq!(field(Dialog::LoraDir, format!("{r}{sep}loras")).check(), Ok(root.join("loras")));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn prompt_tags_fill_the_panel() {
        let known = vec![PathBuf::from("/loras/Ink.safetensors"), PathBuf::from("/loras/pastel.safetensors")];
        let mut panel = vec![entry("pastel", 1.0, false)];
        assert!(panel_from_prompt(
            "a cat <lora:ink:0.6> <lora:pastel:0.3> <lora:missing:1>",
            &mut panel,
            &known
        ));
        assert_eq!(panel.len(), 2);
        assert_eq!(panel[0], entry("pastel", 0.3, true));
        assert_eq!(panel[1].path, known[0]);
        assert_eq!(panel[1].strength, 0.6);
        assert!(
            !panel_from_prompt("a cat <lora:ink:0.6> <lora:pastel:0.3>", &mut panel, &known),
            "no change the second time"
        );
    }

    #[test]
    fn panel_changes_rewrite_the_prompt() {
        let cases: &[(&str, Option<LoraEntry>, &str)] = &[
            (
                "a cat <lora:ink:0.6>, red",
                Some(entry("ink", 0.85, true)),
                "a cat <lora:ink:0.85>, red",
            ),
            (
                "a cat <lora:INK:0.6>, red",
                Some(entry("ink", 1.0, true)),
                "a cat <lora:INK:1>, red",
            ),
            ("a cat <lora:ink:0.6> red", None, "a cat red"),
            ("a cat <lora:ink:0.6>", None, "a cat"),
            (
                "a cat <lora:ink:0.6> <lora:other:1>",
                Some(entry("ink", 0.5, false)),
                "a cat <lora:other:1>",
            ),
            ("no tags here", Some(entry("ink", 0.5, true)), "no tags here"),
            ("broken <lora:ink:0.5", None, "broken <lora:ink:0.5"),
        ];
        for (prompt, e, want) in cases {
            assert_eq!(prompt_from_panel(prompt, "ink", e.as_ref()), *want, "{prompt}");
        }
    }

    #[test]
    fn strengths_print_short() {
        for (v, s) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (0.65, "0.65"),
            (0.0, "0"),
            (-0.25, "-0.25"),
            (1.234, "1.23"),
        ] {
            assert_eq!(format_strength(v), s);
        }
    }

    #[test]
    fn restore_fixes_the_seed() {
        let mut p = Params::default();
        let text = "red circle\nNegative prompt: blur\nSteps: 12, Sampler: Euler a, Schedule type: Automatic, CFG scale: 3.5, Seed: 77, Size: 64x96";
        p.restore(&Parameters::parse(text).expect("parses"));
        assert_eq!(
            (
                p.prompt.as_str(),
                p.negative.as_str(),
                p.steps,
                p.cfg_scale,
                p.seed,
                p.width,
                p.height
            ),
            ("red circle", "blur", 12, 3.5, 77, 64, 96)
        );
        assert_eq!(
            (p.solver.as_str(), p.schedule.as_str(), p.seed_mode),
            ("euler-a", "default", SeedMode::Fixed)
        );
    }

    #[test]
    fn settings_round_trip_and_tolerate_old_fields() {
        let mut s = Settings::default();
        s.params.prompt = "x".into();
        s.loras.push(entry("ink", 0.5, true));
        s.remember_model(Path::new("/m/a.safetensors"));
        let text = serde_json::to_string(&s).expect("serialises");
        let back: Settings = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, s);
        // Settings written by an older or newer version: unknown and missing keys are fine.
        let partial: Settings = serde_json::from_str(r#"{"live": true, "future_key": 3, "params": {"steps": 9}}"#).expect("parses");
        assert!(partial.live);
        assert_eq!(partial.params.steps, 9);
        assert_eq!(partial.params.solver, Params::default().solver);
    }
}
