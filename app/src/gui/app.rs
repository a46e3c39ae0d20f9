//! The studio window: drains engine and file events first, then draws the panels, then
//! applies the [`Action`]s they returned (turning clicks into protocol commands, file jobs
//! and dialogs). Nothing here waits on the engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use latent_engine::metadata::Parameters;
use latent_engine::protocol::{Event, ImageRgb8, ModelSpec};
use latent_engine::worker::Backend;
use latent_engine::{EngineConfig, EngineHandle};

use super::actions::{Action, Dialog, View};
use super::files::{FileEvent, FileJob, FileKind, FileWorker, classify};
use super::panels;
use super::state::{
    HistoryItem, Job, Level, ModelState, PathField, SeedMode, Session, Settings, Shown, StripFrame, ThemeChoice, file_name, file_stem,
    random_seed,
};
use crate::assets::{embedded_lora_dir, embedded_model};

/// How long sliders must rest before live mode regenerates.
pub const LIVE_DEBOUNCE: Duration = Duration::from_millis(300);
/// History thumbnails read back from the output folder at start.
const HISTORY_LIMIT: usize = 60;

/// How the window starts (the binary fills it from the command line; tests from fixtures).
pub struct Launch {
    /// Settings to start from; `None` reads them from eframe storage (or defaults).
    pub settings: Option<Settings>,
    /// A stand-in engine backend (tests); `None` runs the real pipeline.
    pub backend: Option<Box<dyn Backend>>,
    /// A model to open now, overriding the remembered one.
    pub model: Option<PathBuf>,
    /// The model opened when nothing is configured (the embedded default).
    pub default_model: Option<PathBuf>,
    /// A LoRA folder always listed in the LoRA panel and searched for `<lora:name>` tags
    /// (the shipped demo LoRA's).
    pub builtin_loras: Option<PathBuf>,
    /// Overrides the output folder.
    pub output_dir: Option<PathBuf>,
    /// Read the output folder's images into the history at start.
    pub load_history: bool,
    /// Native file dialogs (off in tests: headless there is no portal to answer them).
    pub dialogs: bool,
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            settings: None,
            backend: None,
            model: None,
            default_model: embedded_model(),
            builtin_loras: embedded_lora_dir(),
            output_dir: None,
            load_history: true,
            dialogs: true,
        }
    }
}

/// Dialog threads send what the user picked here.
type DialogChannel = (
    crossbeam_channel::Sender<(Dialog, DialogAnswer)>,
    crossbeam_channel::Receiver<(Dialog, DialogAnswer)>,
);

/// The paths picked (none when cancelled), or why the dialog could not show.
type DialogAnswer = Result<Vec<PathBuf>, String>;

/// A dialog that returns nothing sooner than this never showed (a portal that is missing or
/// refuses answers within milliseconds; a person takes longer to cancel).
const DIALOG_FAILED_WITHIN: Duration = Duration::from_millis(400);

/// Why no desktop portal can show a file dialog here, if that is known before trying: on
/// Linux the portal answers over the D-Bus session bus, so without one there is none.
fn no_portal() -> Option<&'static str> {
    if !cfg!(all(unix, not(target_os = "macos"))) {
        return None;
    }
    let bus_named = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty());
    let bus_socket = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("bus").exists());
    (!bus_named && !bus_socket)
        .then_some("No file dialog here: there is no D-Bus session, so no desktop portal can show one. Type the path instead.")
}

/// The closure the engine calls after each event: a repaint of the window.
pub fn waker(ctx: &egui::Context) -> impl Fn() + Send + Sync + Clone + 'static {
    let ctx = ctx.clone();
    move || ctx.request_repaint()
}

/// This machine's engine for these settings.
pub fn local_config(settings: &Settings, builtin_loras: Option<&Path>) -> EngineConfig {
    let mut lora_dirs = settings.lora_dirs.clone();
    lora_dirs.extend(builtin_loras.map(Path::to_path_buf));
    EngineConfig {
        lora_dirs,
        embedding_dirs: super::files::embedding_dirs(&settings.model_dirs),
        ..EngineConfig::default()
    }
}

/// The studio: persisted settings, session state, the engine and the file thread.
pub struct StudioApp {
    pub settings: Settings,
    pub session: Session,
    pub(super) engine: EngineHandle,
    pub(super) files: FileWorker,
    ram: (Instant, Option<u64>),
    show_memory: bool,
    pub(super) ctx: egui::Context,
    dialogs: Option<DialogChannel>,
    /// The shipped LoRA folder (listed with the user's).
    pub(super) builtin_loras: Option<PathBuf>,
}

impl StudioApp {
    /// Builds the app inside eframe's creation context.
    pub fn new(cc: &eframe::CreationContext<'_>, mut launch: Launch) -> anyhow::Result<Self> {
        let stored = cc.storage.and_then(|s| eframe::get_value::<Settings>(s, eframe::APP_KEY));
        let mut settings = launch.settings.take().or(stored).unwrap_or_default();
        if let Some(dir) = launch.output_dir.take() {
            settings.output_dir = dir;
        }
        let renderer = if let Some(rs) = cc.wgpu_render_state.as_ref() {
            let info = rs.adapter.get_info();
            format!("wgpu ({:?}, {})", info.backend, info.name)
        } else if cc.gl.is_some() {
            "glow (OpenGL)".to_string()
        } else {
            "no renderer".to_string()
        };
        Self::start(&cc.egui_ctx, settings, launch, renderer)
    }

    fn start(ctx: &egui::Context, settings: Settings, launch: Launch, renderer: String) -> anyhow::Result<Self> {
        let waker = waker(ctx);
        let config = local_config(&settings, launch.builtin_loras.as_deref());
        let engine = match launch.backend {
            Some(b) => EngineHandle::spawn_with_backend(config, b, waker.clone())?,
            None => EngineHandle::spawn(config, waker.clone())?,
        };
        let files = FileWorker::spawn(waker)?;
        let mut app = Self {
            settings,
            session: Session {
                renderer,
                ..Session::default()
            },
            engine,
            files,
            ram: (Instant::now() - Duration::from_secs(10), None),
            show_memory: true,
            ctx: ctx.clone(),
            dialogs: launch.dialogs.then(|| crossbeam_channel::bounded(8)),
            builtin_loras: launch.builtin_loras,
        };
        app.apply_theme(ctx);
        app.rescan();
        app.list_builtin_loras();
        if launch.load_history {
            let dir = app.settings.output_dir.clone();
            let _ = app.files.send(FileJob::LoadHistory { dir, limit: HISTORY_LIMIT });
        }
        if !app.settings.loras.is_empty() {
            app.push_loras();
        }
        let start_model = launch.model.or_else(|| app.settings.model.clone()).or(launch.default_model);
        if let Some(p) = start_model {
            app.open_model(&p);
        }
        Ok(app)
    }

    /// Re-reads the model and LoRA folders (the server's lists while connected to one).
    pub fn rescan(&mut self) {
        if self.session.remote.connected.is_some() {
            self.relist();
            return;
        }
        self.session.found_models = super::files::scan_models(&self.settings.model_dirs);
        self.session.model_notes = super::files::model_notes(&self.session.found_models);
        let mut lora_dirs = self.settings.model_dirs.clone();
        lora_dirs.extend(self.settings.lora_dirs.iter().cloned());
        lora_dirs.extend(self.builtin_loras.iter().cloned());
        self.session.found_loras = super::files::scan_loras(&lora_dirs);
        self.session.found_vaes = super::files::scan_vaes(&self.settings.model_dirs, &["VAE", "vae"]);
        self.session.found_upscalers = super::files::scan_vaes(&self.settings.model_dirs, &["ESRGAN", "RealESRGAN", "upscale_models"]);
        let (embeddings, _) = latent_engine::checkpoint::embedding::scan(&super::files::embedding_dirs(&self.settings.model_dirs));
        self.session.found_embeddings = embeddings.into_iter().map(|(name, _)| name).collect();
        self.session.found_tiny_decoders = super::files::scan_vaes(&self.settings.model_dirs, &["VAE-approx", "vae_approx"]);
    }

    /// Lists the shipped LoRAs (the demo `outline`) in the panel, disabled, when they are not
    /// there yet: a newcomer finds them ready to tick.
    fn list_builtin_loras(&mut self) {
        let Some(dir) = self.builtin_loras.clone() else { return };
        for path in self.session.found_loras.iter().filter(|p| p.starts_with(&dir)) {
            if !self
                .settings
                .loras
                .iter()
                .any(|l| l.name().eq_ignore_ascii_case(&super::state::LoraEntry::name_of(path)))
            {
                self.settings.loras.push(super::state::LoraEntry {
                    path: path.clone(),
                    strength: 1.0,
                    enabled: false,
                });
            }
        }
    }

    pub fn apply_theme(&self, ctx: &egui::Context) {
        ctx.set_theme(match self.settings.theme {
            ThemeChoice::System => egui::ThemePreference::System,
            ThemeChoice::Light => egui::ThemePreference::Light,
            ThemeChoice::Dark => egui::ThemePreference::Dark,
        });
    }

    // ---- commands -------------------------------------------------------------------------

    /// Starts loading a model; the current one keeps serving until the new one is ready.
    pub fn open_model(&mut self, path: &Path) {
        let spec = ModelSpec {
            dtype: self.settings.dtype,
            vae_tiling: if self.settings.vae_auto_tiling {
                latent_engine::VaeTiling::Auto
            } else {
                latent_engine::VaeTiling::Off
            },
            vae: self.settings.vae.clone(),
            tiny_decoder: self.settings.tiny_decoder.clone(),
            components: self.settings.components.clone(),
            ..ModelSpec::new(path)
        };
        match self.engine.load_model(spec) {
            Ok(()) => {
                let previous = match std::mem::take(&mut self.session.model) {
                    ModelState::Loaded { path, info } => Some((path, info)),
                    ModelState::Loading { previous, .. } => previous,
                    ModelState::None => None,
                };
                self.session.model = ModelState::Loading {
                    path: path.to_path_buf(),
                    since: Instant::now(),
                    previous,
                };
            }
            Err(e) => self.session.say(Level::Error, format!("cannot load {}: {e}", path.display())),
        }
    }

    /// Sends the panel's LoRA set to the engine.
    pub fn push_loras(&mut self) {
        if let Err(e) = self.engine.set_loras(self.settings.lora_specs()) {
            self.session.say(Level::Error, format!("LoRAs: {e}"));
        }
    }

    /// Queues `batch` images (seeds seed, seed+1, ...). Returns how many were sent.
    pub fn generate(&mut self) -> usize {
        if !matches!(self.session.model, ModelState::Loaded { .. } | ModelState::Loading { .. }) {
            self.session.say(
                Level::Warning,
                "Open a model first (File > Open model file…, or drop a .safetensors file on the window).",
            );
            return 0;
        }
        if self.settings.params.prompt.trim().is_empty() && !self.settings.live {
            self.session.say(
                Level::Info,
                "The prompt is empty, so the model draws whatever it likes: type what you want to see.",
            );
        }
        let p = &mut self.settings.params;
        if p.seed_mode == SeedMode::Random {
            p.seed = random_seed();
        }
        let base = p.seed;
        let mut sent = 0;
        let (init, mask) = match (self.init_for_request(), self.mask_for_request()) {
            (Ok(init), Ok(mask)) => (init, mask),
            (Err(why), _) | (_, Err(why)) => {
                self.session.say(Level::Warning, why);
                return 0;
            }
        };
        for i in 0..self.settings.params.batch.max(1) {
            let mut request = self.settings.params.request(base.wrapping_add(u64::from(i)));
            request.init_image = init.clone();
            request.mask = mask.clone();
            if let Err(why) = self.settings.params.apply_budget(&mut request) {
                self.session.say(Level::Warning, why);
                break;
            }
            match self.engine.generate(request.clone()) {
                Ok(id) => {
                    self.session.jobs.push_back(Job {
                        id,
                        request,
                        total_steps: 0,
                        nfe: 0,
                        step: 0,
                        started: None,
                        step_times: vec![],
                        upscaler: None,
                    });
                    sent += 1;
                }
                Err(e) => {
                    self.session.say(Level::Error, e.to_string());
                    break;
                }
            }
        }
        self.session.last_seed = Some(base);
        self.session.live_sent = Some(self.settings.params.request(base));
        self.session.live_changed = None;
        sent
    }

    /// The init picture fitted to the request's size in image mode (None in text mode); an
    /// image mode without a picture says what to do.
    fn init_for_request(&self) -> Result<Option<Arc<ImageRgb8>>, String> {
        let p = &self.settings.params;
        if p.mode == super::state::GenMode::Text {
            return Ok(None);
        }
        let Some(init) = &self.session.init else {
            return Err("Image to image needs a picture: open one, drop one here, or use \"To img2img\" under History.".into());
        };
        let fit = |img: &ImageRgb8| -> Result<Arc<ImageRgb8>, String> {
            let rgb = image::RgbImage::from_raw(img.width, img.height, img.pixels.clone()).ok_or("the init picture is damaged")?;
            let (w, h) = self.request_picture_size(img);
            Ok(Arc::new(crate::resize::fit(&rgb, w, h, p.resize_mode)))
        };
        Ok(Some(fit(&init.image)?))
    }

    /// Inpainting's mask fitted like the picture (None outside inpaint mode); an unpainted
    /// mask says what to do.
    fn mask_for_request(&self) -> Result<Option<Arc<ImageRgb8>>, String> {
        let p = &self.settings.params;
        if p.mode != super::state::GenMode::Inpaint {
            return Ok(None);
        }
        let Some(init) = &self.session.init else { return Ok(None) };
        if init.painted() == 0.0 {
            return Err("Paint the mask first (Edit mask…): white is repainted, the rest kept.".into());
        }
        let m = init.mask_image();
        let (w, h) = self.request_picture_size(&m);
        let rgb = image::RgbImage::from_raw(m.width, m.height, m.pixels).ok_or("the mask is damaged")?;
        Ok(Some(Arc::new(crate::resize::fit(&rgb, w, h, p.resize_mode))))
    }

    /// The size the picture and mask are sent at: their own for "Only masked" inpainting
    /// (the engine cuts and enlarges the crop), else the request's.
    fn request_picture_size(&self, img: &ImageRgb8) -> (u32, u32) {
        let p = &self.settings.params;
        if p.mode == super::state::GenMode::Inpaint && p.inpaint_area == latent_engine::protocol::InpaintArea::Masked {
            (img.width, img.height)
        } else {
            (p.width, p.height)
        }
    }

    /// An image made from a picture has it (and its mask) kept beside it: restoring the image
    /// takes them back, in image or inpaint mode, so Generate makes it again.
    fn load_kept(&mut self, image: &Path) {
        let (init, mask) = (
            latent_engine::image_io::sidecar(image, "init"),
            latent_engine::image_io::sidecar(image, "mask"),
        );
        if !init.is_file() {
            return;
        }
        self.open_init(&init);
        if mask.is_file() {
            self.open_mask(&mask);
            self.settings.params.mode = super::state::GenMode::Inpaint;
        } else {
            self.settings.params.mode = super::state::GenMode::Image;
        }
    }

    fn open_mask(&mut self, path: &Path) {
        let Some(init) = self.session.init.as_mut() else {
            self.session.say(Level::Warning, "Open the picture first, then its mask.");
            return;
        };
        match crate::png::decode_png(path) {
            Ok((m, _)) => {
                let rgb = image::RgbImage::from_raw(m.width, m.height, m.pixels).unwrap_or_default();
                let fitted = crate::resize::fit(&rgb, init.image.width, init.image.height, crate::resize::ResizeMode::Just);
                init.mask = fitted
                    .pixels
                    .chunks_exact(3)
                    .map(|p| {
                        let l = (u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16;
                        if l >= 128 { 255 } else { 0 }
                    })
                    .collect();
                init.mask_changed = true;
            }
            Err(e) => self.session.say(Level::Error, format!("Cannot open the mask: {e}")),
        }
    }

    /// Takes `image` as image to image's picture and switches to image mode.
    pub fn set_init(&mut self, image: Arc<ImageRgb8>, name: String) {
        self.session.init = Some(super::state::InitImage::new(image, name));
        if self.settings.params.mode == super::state::GenMode::Text {
            self.settings.params.mode = super::state::GenMode::Image;
        }
    }

    /// Opens a picture for image to image (see [`Self::take_picture`]).
    fn open_init(&mut self, path: &Path) {
        match crate::png::decode_picture(path) {
            Ok((img, alpha, _)) => self.take_picture(img, alpha, file_name(path)),
            Err(e) => self.session.say(Level::Error, format!("Cannot open the picture: {e}")),
        }
    }

    /// A picture (with its alpha channel when some pixel is transparent) as image to
    /// image's picture; transparent pixels (alpha below one half) become the inpainting mask
    /// and the mode Inpaint.
    fn take_picture(&mut self, img: ImageRgb8, alpha: Option<Vec<u8>>, name: String) {
        self.set_init(Arc::new(img), name);
        let mut painted = 0.0;
        if let (Some(alpha), Some(init)) = (alpha, self.session.init.as_mut()) {
            init.mask = alpha.iter().map(|&a| if a < 128 { 255 } else { 0 }).collect();
            init.mask_changed = true;
            painted = init.painted();
        }
        if painted > 0.0 {
            self.settings.params.mode = super::state::GenMode::Inpaint;
            self.session.say(
                Level::Info,
                format!(
                    "The picture's transparent pixels are the mask ({:.0}% to repaint).",
                    painted * 100.0
                ),
            );
        }
    }

    /// Takes the clipboard's picture (its transparent pixels, if any, as the mask) as image to
    /// image's picture; without one, says so.
    fn paste_init(&mut self) {
        let got = arboard::Clipboard::new().and_then(|mut c| c.get_image());
        match got {
            Ok(img) if img.width > 0 && img.height > 0 && img.bytes.len() == img.width * img.height * 4 => {
                let (w, h) = (img.width as u32, img.height as u32);
                let rgb: Vec<u8> = img.bytes.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
                let alpha: Vec<u8> = img.bytes.chunks_exact(4).map(|p| p[3]).collect();
                let alpha = alpha.iter().any(|&a| a < 255).then_some(alpha);
                self.take_picture(
                    ImageRgb8 {
                        width: w,
                        height: h,
                        pixels: rgb,
                    },
                    alpha,
                    "the pasted picture".into(),
                );
            }
            Ok(_) => self.session.say(Level::Warning, "The clipboard's picture is empty."),
            Err(e) => self.session.say(Level::Warning, format!("No picture on the clipboard ({e}).")),
        }
    }

    /// The finished image on the canvas (the selected history item, else the newest) and its
    /// parameters text.
    fn shown_image(&self) -> Option<(Arc<ImageRgb8>, String)> {
        let s = &self.session;
        match s.shown {
            Shown::History(i) => s.history.get(i).and_then(|h| Some((h.full.clone()?, h.parameters.clone()))),
            _ => {
                let img = s.last_image.clone()?;
                let parameters = s
                    .history
                    .first()
                    .filter(|h| h.full.as_ref().is_some_and(|f| Arc::ptr_eq(f, &img)))
                    .map(|h| h.parameters.clone());
                Some((img, parameters.unwrap_or_default()))
            }
        }
    }

    /// Sends the image on the canvas to the engine to be enlarged by `model`; the result
    /// arrives as a finished job (history, saved, its parameters kept with the upscaler's).
    fn upscale_shown(&mut self, model: &Path) {
        let Some((image, parameters)) = self.shown_image() else {
            self.session.say(Level::Warning, "No finished image to upscale yet.");
            return;
        };
        let request = latent_engine::protocol::UpscaleRequest {
            image: image.clone(),
            model: model.to_path_buf(),
            parameters,
            tile: 192,
            overlap: 8,
        };
        match self.engine.upscale(request) {
            Ok(id) => self.session.jobs.push_back(Job {
                id,
                request: latent_engine::protocol::GenerateRequest {
                    width: image.width,
                    height: image.height,
                    ..latent_engine::protocol::GenerateRequest::default()
                },
                total_steps: 0,
                nfe: 0,
                step: 0,
                started: None,
                step_times: vec![],
                upscaler: Some(file_stem(model)),
            }),
            Err(e) => self.session.say(Level::Error, e.to_string()),
        }
    }

    /// Outpainting in the window: the picture extended by `sides` (left, top, right, bottom)
    /// pixels, the border its stretched edges, and the mask the border only; Width and
    /// Height follow the new size (to the latent grid) and the mode becomes Inpaint.
    pub fn outpaint(&mut self, sides: [u32; 4]) {
        let Some(init) = self.session.init.as_ref() else {
            self.session.say(Level::Warning, "Open a picture first, then extend it.");
            return;
        };
        if sides.iter().all(|&s| s == 0) {
            return;
        }
        let rgb = image::RgbImage::from_raw(init.image.width, init.image.height, init.image.pixels.clone()).unwrap_or_default();
        let (picture, mask) = crate::resize::outpaint(&rgb, sides);
        let (w, h) = picture.dimensions();
        if u64::from(w) * u64::from(h) > 4096 * 4096 {
            self.session.say(
                Level::Error,
                format!("Extended to {w}x{h} the picture would be too large (at most 4096x4096)."),
            );
            return;
        }
        let name = format!("{} extended", init.name);
        self.set_init(
            Arc::new(ImageRgb8 {
                width: w,
                height: h,
                pixels: picture.into_raw(),
            }),
            name,
        );
        if let Some(init) = self.session.init.as_mut() {
            init.mask = mask.pixels().map(|p| p[0]).collect();
            init.mask_changed = true;
        }
        let p = &mut self.settings.params;
        p.mode = super::state::GenMode::Inpaint;
        p.inpaint_area = latent_engine::protocol::InpaintArea::Whole;
        (p.width, p.height) = (w.div_ceil(8) * 8, h.div_ceil(8) * 8);
    }

    /// Cancels everything queued and the running job (it stops before its next network
    /// evaluation).
    pub fn cancel(&mut self) {
        for j in &self.session.jobs {
            self.engine.cancel(j.id);
        }
    }

    /// Restores the settings an A1111/Latent Studio parameters text carries, the LoRA panel
    /// included, so that Generate makes the same image again; says what could not be
    /// restored. A text without a readable settings line still restores its prompt.
    pub fn restore(&mut self, text: &str) -> bool {
        if text.trim().is_empty() {
            self.session.say(Level::Warning, "This image carries no generation parameters.");
            return false;
        }
        let (p, whole) = match Parameters::parse(text) {
            Some(p) => (p, true),
            None => (Parameters::prompt_only(text), false),
        };
        if whole {
            self.settings.params.restore(&p);
        } else {
            self.settings.params.prompt = p.prompt.clone();
            self.settings.params.negative = p.negative.clone();
        }
        if whole {
            self.restore_vae(&p);
            self.restore_upscaler();
        }
        let before = self.settings.loras.clone();
        let missing = super::state::panel_from_image(&p, &mut self.settings.loras, &self.session.found_loras);
        if self.settings.loras != before {
            self.push_loras();
        }
        if !whole {
            self.session.say(
                Level::Warning,
                "Only the prompt was restored: the settings line (steps, sampler, seed, …) could not be read.",
            );
        }
        let skipped = p.unusable();
        if !skipped.is_empty() {
            self.session
                .say(Level::Warning, format!("Not restored (kept as they were): {}.", skipped.join(", ")));
        }
        if !missing.is_empty() {
            self.session.say(
                Level::Warning,
                format!(
                    "This image was made with {} not found in your LoRA folders; it is left out.",
                    missing.join(", ")
                ),
            );
        }
        true
    }

    /// The hires upscaler model an image names (A1111 writes the file's stem) looked up in
    /// the upscaler folders; one not there is said and the latent upscaler used instead.
    fn restore_upscaler(&mut self) {
        let p = &mut self.settings.params;
        if p.hires_upscaler != latent_engine::protocol::HiresUpscaler::Model {
            return;
        }
        let name = p.hires_model.as_ref().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default();
        let found = self
            .session
            .found_upscalers
            .iter()
            .find(|f| f.file_stem().is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case(&name)));
        match found {
            Some(f) => p.hires_model = Some(f.clone()),
            None => {
                (p.hires_upscaler, p.hires_model) = (latent_engine::protocol::HiresUpscaler::Latent, None);
                self.session.say(
                    Level::Warning,
                    format!("This image was upscaled with {name}, not found in your upscaler folders (models/ESRGAN); the hires fix uses Latent."),
                );
            }
        }
    }

    /// Picks the VAE an image names (`VAE hash`, else `VAE`: A1111's keys) among the VAE
    /// folders' files, and the components checkpoint (`Components hash`, `Components`) among
    /// the model folders' files, and reloads the model with them; one it cannot find is said.
    fn restore_vae(&mut self, p: &Parameters) {
        let vaes = self.session.found_vaes.clone();
        let vae = self.restore_file(p, ("VAE", "VAE hash"), &vaes, |s| &mut s.vae);
        let models = self.session.found_models.clone();
        let components = self.restore_file(p, ("Components", "Components hash"), &models, |s| &mut s.components);
        if vae || components {
            let current = match &self.session.model {
                ModelState::Loaded { path, .. } | ModelState::Loading { path, .. } => Some(path.clone()),
                ModelState::None => None,
            };
            if let Some(m) = current {
                self.open_model(&m);
            }
        }
    }

    /// Sets the setting `slot` to the file of `found` that the image's `keys` (name, hash)
    /// name; true when it changed. Hashes are computed once per file, only when an image asks.
    fn restore_file(
        &mut self,
        p: &Parameters,
        (name_key, hash_key): (&str, &str),
        found: &[PathBuf],
        slot: impl Fn(&mut super::state::Settings) -> &mut Option<PathBuf>,
    ) -> bool {
        let (name, hash) = (p.get(name_key).map(str::trim), p.get(hash_key).map(str::trim));
        if name.is_none() && hash.is_none() {
            return false;
        }
        let mut order = found.to_vec();
        order.sort_by_key(|f| Some(file_name(f).as_str()) != name);
        let pick = match hash {
            Some(h) => order.into_iter().find(|f| {
                let known = self.session.vae_hashes.get(f).cloned();
                let fh = known.or_else(|| latent_engine::checkpoint::short_hash(f)).unwrap_or_default();
                self.session.vae_hashes.insert(f.clone(), fh.clone());
                fh.eq_ignore_ascii_case(h)
            }),
            None => order.into_iter().find(|f| Some(file_name(f).as_str()) == name),
        };
        match pick {
            Some(v) if slot(&mut self.settings).as_ref() != Some(&v) => {
                *slot(&mut self.settings) = Some(v);
                true
            }
            Some(_) => false,
            None => {
                self.session.say(
                    Level::Warning,
                    format!(
                        "This image was made with {name_key} {} not found in your model folders; the current choice is kept.",
                        name.or(hash).unwrap_or("?")
                    ),
                );
                false
            }
        }
    }

    /// Opens whatever was dropped or chosen: model, LoRA or PNG.
    pub fn open_path(&mut self, path: &Path) {
        match classify(path) {
            FileKind::Model => {
                self.settings.remember_model(path);
                self.open_model(path);
            }
            FileKind::Lora => self.add_lora(path),
            FileKind::Image if self.settings.params.mode != super::state::GenMode::Text => self.open_init(path),
            FileKind::Image => match latent_engine::image_io::read_png_parameters(path) {
                Ok(Some(text)) => {
                    let restored = self.restore(&text);
                    self.load_kept(path);
                    if restored {
                        self.session.say(Level::Info, format!("Settings restored from {}", file_name(path)));
                    }
                    let _ = self.files.send(FileJob::Open { path: path.to_path_buf() });
                }
                Ok(None) => self
                    .session
                    .say(Level::Warning, format!("{} has no generation parameters", file_name(path))),
                Err(e) => self.session.say(Level::Error, e.to_string()),
            },
            FileKind::Unsupported(why) => self.session.say(Level::Error, why),
        }
    }

    /// Adds a LoRA to the panel (enabled, strength 1) and applies it.
    pub fn add_lora(&mut self, path: &Path) {
        if self.settings.loras.iter().any(|l| l.path == path) {
            self.session
                .say(Level::Info, format!("{} is already in the LoRA panel", file_name(path)));
            return;
        }
        self.settings.loras.push(super::state::LoraEntry {
            path: path.to_path_buf(),
            strength: 1.0,
            enabled: true,
        });
        self.push_loras();
    }

    /// Shows a history item and restores its settings.
    pub fn select_history(&mut self, index: usize) {
        let Some(item) = self.session.history.get(index) else { return };
        let text = item.parameters.clone();
        let need_full = item.full.is_none();
        let path = item.path.clone();
        self.session.shown = Shown::History(index);
        if !text.is_empty() {
            self.restore(&text);
        }
        if let Some(p) = &path {
            self.load_kept(p);
        }
        if need_full && let Some(path) = path {
            let _ = self.files.send(FileJob::Open { path });
        }
    }

    /// Copies the image on the canvas to the clipboard.
    pub fn copy_shown(&mut self, ctx: &egui::Context) {
        let image = match self.session.shown {
            Shown::History(i) => self.session.history.get(i).and_then(|h| h.full.clone()),
            _ => self.session.last_image.clone(),
        };
        match image {
            Some(img) => {
                ctx.copy_image(to_color_image(&img));
                self.session.say(Level::Info, "Image copied to the clipboard.");
            }
            None => self.session.say(Level::Warning, "No finished image to copy yet."),
        }
    }

    /// Opens a native file dialog on its own thread; the answer arrives with the events. Where
    /// no dialog can open (no desktop portal, dialogs off) or one fails at once, a path field
    /// stands in for it, with a line that says why.
    pub fn dialog(&mut self, kind: Dialog) {
        let start = self.dialog_start(kind);
        let Some((tx, _)) = self.dialogs.clone() else {
            self.path_field(
                kind,
                start.as_deref(),
                "File dialogs are off in this window: type the path instead.",
            );
            return;
        };
        if let Some(why) = no_portal() {
            self.path_field(kind, start.as_deref(), why);
            return;
        }
        let ctx = self.ctx.clone();
        let spawned = std::thread::Builder::new().name("latent-dialog".into()).spawn(move || {
            let mut d = rfd::AsyncFileDialog::new().set_title(kind.title());
            if let Some(dir) = start.filter(|d| d.is_dir()) {
                d = d.set_directory(dir);
            }
            let exts = kind.extensions();
            if !exts.is_empty() {
                let what = match kind {
                    Dialog::Image => "PNG image",
                    Dialog::InitImage | Dialog::Mask => "picture",
                    _ => "safetensors",
                };
                d = d.add_filter(what, exts);
            }
            let asked = Instant::now();
            let one = |f: Option<rfd::FileHandle>| f.map(|h| vec![h.path().to_path_buf()]);
            let paths = match kind {
                Dialog::ModelFile | Dialog::Image | Dialog::InitImage | Dialog::Mask => one(pollster::block_on(d.pick_file())),
                Dialog::Lora => pollster::block_on(d.pick_files()).map(|v| v.iter().map(|h| h.path().to_path_buf()).collect()),
                Dialog::ModelFolder | Dialog::ModelDir | Dialog::LoraDir | Dialog::OutputDir => one(pollster::block_on(d.pick_folder())),
            };
            let answer = match paths {
                Some(p) => Ok(p),
                // Nobody closes a dialog this fast: the portal refused or is not there.
                None if asked.elapsed() < DIALOG_FAILED_WITHIN => {
                    Err("The file dialog did not open (no desktop portal answered): type the path instead.".to_owned())
                }
                None => Ok(vec![]),
            };
            if tx.send((kind, answer)).is_ok() {
                ctx.request_repaint();
            }
        });
        if let Err(e) = spawned {
            self.path_field(kind, None, format!("The file dialog could not start ({e}): type the path instead."));
        }
    }

    /// Where dialog `kind` starts.
    fn dialog_start(&self, kind: Dialog) -> Option<PathBuf> {
        match kind {
            Dialog::OutputDir | Dialog::Image | Dialog::InitImage | Dialog::Mask => Some(self.settings.output_dir.clone()),
            Dialog::ModelFile | Dialog::ModelFolder | Dialog::ModelDir => self.settings.model_dirs.first().cloned(),
            Dialog::Lora | Dialog::LoraDir => self.settings.lora_dirs.first().cloned(),
        }
    }

    /// Shows the path field standing in for dialog `kind`.
    fn path_field(&mut self, kind: Dialog, start: Option<&Path>, why: impl Into<String>) {
        self.session.path_field = Some(PathField::new(kind, start, why));
    }

    /// What the user picked in a dialog.
    pub fn on_dialog(&mut self, kind: Dialog, paths: Vec<PathBuf>) {
        for p in paths {
            match kind {
                Dialog::ModelFile | Dialog::ModelFolder | Dialog::Image => self.open_path(&p),
                Dialog::Lora => self.add_lora(&p),
                Dialog::InitImage => self.open_init(&p),
                Dialog::Mask => self.open_mask(&p),
                Dialog::ModelDir | Dialog::LoraDir => {
                    let list = if kind == Dialog::ModelDir {
                        &mut self.settings.model_dirs
                    } else {
                        &mut self.settings.lora_dirs
                    };
                    if !list.contains(&p) {
                        list.push(p);
                    }
                    self.rescan();
                }
                Dialog::OutputDir => {
                    self.settings.output_dir = p;
                    self.session.history.clear();
                    self.session.shown = Shown::Live;
                    let dir = self.settings.output_dir.clone();
                    let _ = self.files.send(FileJob::LoadHistory { dir, limit: HISTORY_LIMIT });
                }
            }
        }
    }

    // ---- events ---------------------------------------------------------------------------

    /// Applies every waiting engine and file event (never blocks).
    pub fn drain_events(&mut self, ctx: &egui::Context) {
        self.poll_connect();
        while let Some(e) = self.engine.try_recv() {
            self.on_event(ctx, e);
        }
        while let Ok(e) = self.files.events.try_recv() {
            self.on_file_event(ctx, e);
        }
        let picked: Vec<_> = self.dialogs.as_ref().map(|(_, rx)| rx.try_iter().collect()).unwrap_or_default();
        for (kind, answer) in picked {
            match answer {
                Ok(paths) => self.on_dialog(kind, paths),
                Err(why) => {
                    let start = self.dialog_start(kind);
                    self.path_field(kind, start.as_deref(), why);
                }
            }
        }
    }

    fn on_event(&mut self, ctx: &egui::Context, e: Event) {
        if e.job().is_some() && e.job() == self.session.lab.job {
            self.on_lab_event(ctx, e);
            return;
        }
        let canvas_filter = self.settings.canvas_filter();
        let live = self.settings.live;
        let s = &mut self.session;
        match e {
            Event::ModelLoaded { info } => {
                let path = match std::mem::take(&mut s.model) {
                    ModelState::Loading { path, .. } => path,
                    ModelState::Loaded { path, .. } => path,
                    ModelState::None => PathBuf::new(),
                };
                // A server's models are names there, not files here.
                if !path.as_os_str().is_empty() && s.remote.connected.is_none() {
                    self.settings.remember_model(&path);
                }
                if self.settings.native_size != Some(info.default_size) {
                    self.settings.native_size = Some(info.default_size);
                    (self.settings.params.width, self.settings.params.height) = info.default_size;
                }
                if self.settings.native_guidance != Some(info.default_guidance) {
                    self.settings.native_guidance = Some(info.default_guidance);
                    self.settings.params.cfg_scale = info.default_guidance;
                }
                self.session.model = ModelState::Loaded { path, info };
            }
            Event::LorasApplied { reports } => {
                s.lora_reports = reports
                    .iter()
                    .map(|r| (r.name.clone(), format!("{}/{} layers", r.applied, r.total)))
                    .collect();
            }
            Event::Started { id, total_steps, nfe } => {
                if let Some(j) = s.jobs.iter_mut().find(|j| j.id == id) {
                    j.total_steps = total_steps;
                    j.nfe = nfe;
                    j.started = Some(Instant::now());
                }
                // A new job takes the canvas and the strip back to the run that forms.
                s.strip.clear();
                s.shown = Shown::Live;
            }
            Event::Progress { id, step, step_time, .. } => {
                if let Some(j) = s.jobs.iter_mut().find(|j| j.id == id) {
                    j.step = step;
                    j.step_times.push(step_time);
                }
            }
            Event::Preview { id, step, image } => {
                if s.jobs.front().is_some_and(|j| j.id == id) {
                    let tex = ctx.load_texture(format!("preview-{id}-{step}"), to_color_image(&image), canvas_filter);
                    s.canvas = Some((tex.clone(), [image.width, image.height]));
                    s.strip.push(StripFrame { step, texture: tex });
                }
            }
            Event::Finished {
                id,
                image,
                metadata,
                timings,
                ..
            } => {
                let sent_request = s.jobs.iter().find(|j| j.id == id).map(|j| j.request.clone());
                if let Some(j) = s.jobs.iter().find(|j| j.id == id && j.upscaler.is_none()) {
                    s.timing_log.push(super::state::TimingEntry {
                        request: j.request.clone(),
                        timings: timings.clone(),
                    });
                    if s.timing_log.len() > 200 {
                        s.timing_log.remove(0);
                    }
                }
                s.jobs.retain(|j| j.id != id);
                let image = Arc::new(image);
                let tex = ctx.load_texture(format!("image-{id}"), to_color_image(&image), canvas_filter);
                s.canvas = Some((tex.clone(), [image.width, image.height]));
                s.last = Some(timings.clone());
                s.last_image = Some(image.clone());
                if let Shown::History(i) = s.shown {
                    s.shown = Shown::History(i + 1);
                }
                s.history.insert(
                    0,
                    HistoryItem {
                        job: Some(id),
                        path: None,
                        parameters: metadata.clone(),
                        texture: tex,
                        size: [image.width, image.height],
                        full: Some(image.clone()),
                        timings: Some(timings),
                    },
                );
                // Keep full images of the newest items only; older ones reload from disk.
                for h in s.history.iter_mut().skip(24) {
                    if h.path.is_some() {
                        h.full = None;
                    }
                }
                let dir = self.settings.output_dir.clone();
                let kept = sent_request
                    .map(|r| {
                        [("init", r.init_image), ("mask", r.mask)]
                            .into_iter()
                            .filter_map(|(k, i)| i.map(|i| (k, i)))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Err(err) = self.files.send(FileJob::Save {
                    job: id,
                    dir,
                    image,
                    parameters: metadata,
                    kept,
                }) {
                    self.session.say(Level::Error, format!("the image was not saved: {err}"));
                }
            }
            Event::Cancelled { id, at_step } => {
                s.jobs.retain(|j| j.id != id);
                // Live mode cancels stale jobs itself: no banner for those (it would move the
                // layout under the sliders at every change).
                if at_step > 0 && !(live && s.live_cancelled.remove(&id)) {
                    s.say(Level::Info, format!("Cancelled at step {at_step}."));
                }
            }
            Event::Failed { id: Some(id), error } => {
                s.jobs.retain(|j| j.id != id);
                s.say(Level::Error, error);
            }
            Event::Failed { id: None, error } => {
                if let ModelState::Loading { previous, path, .. } = std::mem::take(&mut s.model) {
                    s.model = match previous {
                        Some((path, info)) => ModelState::Loaded { path, info },
                        None => ModelState::None,
                    };
                    s.say(Level::Error, format!("Could not open {}: {error}", file_name(&path)));
                } else {
                    s.say(Level::Error, error);
                }
            }
            Event::Warning { message, .. } => s.say(Level::Warning, message),
            // Cells of a comparison this window no longer follows.
            Event::CompareCell { .. } => {}
        }
    }

    fn on_file_event(&mut self, ctx: &egui::Context, e: FileEvent) {
        let s = &mut self.session;
        match e {
            FileEvent::Saved { job, path } => {
                if let Some(h) = s.history.iter_mut().find(|h| h.job == Some(job)) {
                    h.path = Some(path);
                }
            }
            FileEvent::SaveFailed { error, .. } => s.say(Level::Error, error),
            FileEvent::Found {
                path,
                thumb,
                size,
                parameters,
            } => {
                if s.history.iter().any(|h| h.path.as_ref() == Some(&path)) {
                    return;
                }
                let tex = ctx.load_texture(
                    format!("thumb-{}", path.display()),
                    to_color_image(&thumb),
                    egui::TextureOptions::LINEAR,
                );
                s.history.push(HistoryItem {
                    job: None,
                    path: Some(path),
                    parameters,
                    texture: tex,
                    size,
                    full: None,
                    timings: None,
                });
            }
            FileEvent::LabSaved(Ok(dir)) => s.say(Level::Info, format!("Solver lab saved in {}", dir.display())),
            FileEvent::LabSaved(Err(e)) => s.say(Level::Error, format!("Cannot save the solver lab: {e}")),
            FileEvent::Opened { path, image, parameters } => {
                let image = Arc::new(image);
                let tex = ctx.load_texture(
                    format!("full-{}", path.display()),
                    to_color_image(&image),
                    self.settings.canvas_filter(),
                );
                if let Some(i) = s.history.iter().position(|h| h.path.as_ref() == Some(&path)) {
                    let h = &mut s.history[i];
                    h.texture = tex;
                    h.full = Some(image);
                    s.shown = Shown::History(i);
                } else {
                    s.history.insert(
                        0,
                        HistoryItem {
                            job: None,
                            path: Some(path),
                            parameters: parameters.unwrap_or_default(),
                            texture: tex,
                            size: [image.width, image.height],
                            full: Some(image),
                            timings: None,
                        },
                    );
                    s.shown = Shown::History(0);
                }
            }
            FileEvent::OpenFailed { error, .. } => s.say(Level::Error, error),
        }
    }

    /// Live mode: regenerate once the sliders have rested for [`LIVE_DEBOUNCE`], cancelling
    /// the stale job first.
    fn live_tick(&mut self, ctx: &egui::Context) {
        if !self.settings.live || !matches!(self.session.model, ModelState::Loaded { .. }) {
            self.session.live_changed = None;
            return;
        }
        let current = self.settings.params.request(self.settings.params.seed);
        if self.session.live_sent.as_ref() == Some(&current) {
            self.session.live_changed = None;
            return;
        }
        let changed = *self.session.live_changed.get_or_insert_with(Instant::now);
        let rested = changed.elapsed();
        if rested >= LIVE_DEBOUNCE {
            self.session.live_cancelled.extend(self.session.jobs.iter().map(|j| j.id));
            self.cancel();
            let mode = self.settings.params.seed_mode;
            self.settings.params.seed_mode = SeedMode::Fixed;
            self.generate();
            self.settings.params.seed_mode = mode;
        } else {
            ctx.request_repaint_after(LIVE_DEBOUNCE - rested);
        }
    }

    /// Keyboard shortcuts that work anywhere, taken before the text fields see them.
    fn shortcuts(&mut self, ctx: &egui::Context) {
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter)) {
            self.generate();
        }
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Escape)) {
            self.cancel();
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        for p in dropped {
            self.open_path(&p);
        }
    }

    /// Shows or hides the memory figure in the status bar (snapshot tests hide it: it
    /// changes from run to run).
    pub fn set_memory_display(&mut self, on: bool) {
        self.show_memory = on;
    }

    /// Resident memory of this process, refreshed at most once a second (Linux).
    pub fn ram_bytes(&mut self) -> Option<u64> {
        if !self.show_memory {
            return None;
        }
        if self.ram.0.elapsed() > Duration::from_secs(1) {
            let rss = std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map(|pages| pages * 4096);
            self.ram = (Instant::now(), rss);
        }
        self.ram.1
    }

    /// One frame: events first, then each panel and what it asked for.
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.drain_events(&ctx);
        self.shortcuts(&ctx);
        self.session.ram = self.ram_bytes();
        self.panel(ui, panels::top_bar);
        self.panel(ui, panels::status::show);
        egui::Panel::left("controls").default_size(330.0).min_size(260.0).show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                self.panel(ui, panels::model::show);
                ui.separator();
                self.panel(ui, panels::prompt::show);
                ui.separator();
                self.panel(ui, panels::sampler::show);
                ui.separator();
                self.panel(ui, panels::lora::show);
            });
        });
        egui::Panel::right("history").default_size(220.0).min_size(140.0).show(ui, |ui| {
            self.panel(ui, panels::gallery::show);
        });
        egui::CentralPanel::default().show(ui, |ui| self.panel(ui, panels::canvas::show));
        let mut actions = vec![];
        panels::windows::show(&mut View::new(&mut self.settings, &mut self.session, &mut actions), &ctx);
        panels::path_field::show(&mut View::new(&mut self.settings, &mut self.session, &mut actions), &ctx);
        for a in actions {
            self.apply(a, &ctx);
        }
        self.live_tick(&ctx);
        if let ModelState::Loading { .. } = self.session.model {
            // The spinner animates while the model loads.
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    /// Draws one panel and does what it asked for before the next panel draws (so a message
    /// it caused shows in this same frame).
    fn panel(&mut self, ui: &mut egui::Ui, draw: impl FnOnce(&mut View, &mut egui::Ui)) {
        let mut actions = vec![];
        draw(&mut View::new(&mut self.settings, &mut self.session, &mut actions), ui);
        let ctx = ui.ctx().clone();
        for a in actions {
            self.apply(a, &ctx);
        }
    }

    /// Does what a panel asked for.
    pub fn apply(&mut self, action: Action, ctx: &egui::Context) {
        match action {
            Action::Dialog(kind) => self.dialog(kind),
            Action::OpenPath(p) => self.open_path(&p),
            Action::OpenModel(p) => self.open_model(&p),
            Action::Generate => {
                self.generate();
            }
            Action::Cancel => self.cancel(),
            Action::CopyShown => self.copy_shown(ctx),
            Action::ShownToInit => match self.shown_image() {
                Some((img, _)) => self.set_init(img, "the image on the canvas".into()),
                None => self.session.say(Level::Warning, "No finished image to start from yet."),
            },
            Action::UpscaleShown(model) => self.upscale_shown(&model),
            Action::PasteInit => self.paste_init(),
            Action::ClearInit => self.session.init = None,
            Action::Outpaint(sides) => self.outpaint(sides),
            Action::SelectHistory(i) => self.select_history(i),
            Action::PushLoras => self.push_loras(),
            Action::Rescan => self.rescan(),
            Action::ApplyTheme => self.apply_theme(ctx),
            Action::Compare => self.compare(),
            Action::SaveLab => self.save_lab(),
            Action::CancelCompare => {
                if let Some(id) = self.session.lab.job {
                    self.engine.cancel(id);
                }
            }
            Action::Connect => self.connect(),
            Action::Disconnect => self.disconnect(),
            Action::Picked(kind, paths) => self.on_dialog(kind, paths),
        }
    }

    /// The engine's handle (tests use it to look at what the window sent).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}

/// An engine image as an egui image.
pub fn to_color_image(img: &ImageRgb8) -> egui::ColorImage {
    let n = (img.width * img.height * 3) as usize;
    if img.pixels.len() < n {
        return egui::ColorImage::new([1, 1], vec![egui::Color32::BLACK]);
    }
    egui::ColorImage::from_rgb([img.width as usize, img.height as usize], &img.pixels[..n])
}
