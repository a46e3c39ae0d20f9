//! What the panels give back: the state they draw comes in as a [`View`], and anything that
//! needs the engine, the file thread, a dialog or the clipboard goes out as an [`Action`],
//! which the app applies after drawing. Panels never see the app object.

use std::path::PathBuf;

pub use super::state::Dialog;
use super::state::{Session, Settings};

/// A request from a panel to the app.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Open a native file dialog (or the fallback path field).
    Dialog(Dialog),
    /// Open whatever this is: model, LoRA or PNG (restores its settings).
    OpenPath(PathBuf),
    /// (Re)load this model with the current precision settings.
    OpenModel(PathBuf),
    /// Queue the batch with the current settings.
    Generate,
    /// Cancel the running and queued jobs.
    Cancel,
    /// Copy the image on the canvas to the clipboard.
    CopyShown,
    /// Show history item `i` and restore its settings.
    SelectHistory(usize),
    /// Send the LoRA panel's set to the engine.
    PushLoras,
    /// Re-read the model and LoRA folders.
    Rescan,
    /// Apply the theme in the settings.
    ApplyTheme,
    /// Start image to image from the image on the canvas.
    ShownToInit,
    /// Enlarge the image on the canvas with this upscaler model (a new image in the history).
    UpscaleShown(PathBuf),
    /// Take the clipboard's picture as the init picture.
    PasteInit,
    /// Forget the init picture.
    ClearInit,
    /// Extend the init picture by (left, top, right, bottom) pixels to outpaint them.
    Outpaint([u32; 4]),
    /// Run the solver lab's comparison (View > Solver lab) with the main panels' settings.
    Compare,
    /// Stop the running comparison.
    CancelCompare,
    /// Write the finished comparison's grid, cells, CSV and plot into the output folder.
    SaveLab,
    /// Run the jobs on the server typed in File > Connect to server.
    Connect,
    /// Back to this machine's engine.
    Disconnect,
    /// The user picked these paths (in a dialog or the path field).
    Picked(Dialog, Vec<PathBuf>),
}

/// What a panel draws and edits, and where it puts what the user asked for.
pub struct View<'a> {
    pub settings: &'a mut Settings,
    pub session: &'a mut Session,
    actions: &'a mut Vec<Action>,
}

impl<'a> View<'a> {
    pub fn new(settings: &'a mut Settings, session: &'a mut Session, actions: &'a mut Vec<Action>) -> Self {
        Self {
            settings,
            session,
            actions,
        }
    }

    /// Asks the app to do `a` once the frame is drawn.
    pub fn act(&mut self, a: Action) {
        self.actions.push(a);
    }
}
