//! What backends share to check their own settings: the [`Refusal`] a check returns (the
//! manifest stage locates it in sprites.ron), the [`SettingsContext`] a check may read,
//! and the sampling limits both AI backends apply.
//!
//! Invariant: a check reads nothing but its settings and the context; every file it reads
//! goes through [`SettingsContext::read`], so a change to that file reruns the build.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::conditioning::InitSpec;

/// Largest side of a draw `resolution`; it must also be a multiple of 8.
pub const MAX_RESOLUTION: u32 = 4096;
/// Most diffusion steps.
pub const MAX_STEPS: u32 = 1000;
/// Largest classifier-free guidance scale accepted (it must be finite and not negative).
pub const MAX_GUIDANCE: f32 = 100.0;

/// A setting a backend refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The generator's field the setting is written in (`"model"`, `"url"`, …).
    pub field: &'static str,
    /// The string literal inside that field to point at, when narrower (one URL of a
    /// list).
    pub literal: Option<String>,
    pub message: String,
    /// What the pointer under the setting says.
    pub label: &'static str,
    /// What to do about it.
    pub help: String,
}

impl Refusal {
    pub fn new(
        field: &'static str,
        message: impl Into<String>,
        label: &'static str,
        help: impl Into<String>,
    ) -> Refusal {
        Refusal {
            field,
            literal: None,
            message: message.into(),
            label,
            help: help.into(),
        }
    }

    /// Points at the string literal `literal` inside the field.
    pub fn at_literal(mut self, literal: &str) -> Refusal {
        self.literal = Some(literal.to_owned());
        self
    }
}

/// What a backend's settings check may read: the folder relative paths start from, and
/// files (each recorded for rerun-if-changed, even one that fails to load).
pub struct SettingsContext<'a> {
    pub manifest_dir: &'a Path,
    read: &'a RefCell<Vec<PathBuf>>,
}

impl<'a> SettingsContext<'a> {
    pub fn new(manifest_dir: &'a Path, read: &'a RefCell<Vec<PathBuf>>) -> SettingsContext<'a> {
        SettingsContext { manifest_dir, read }
    }

    /// `path` (relative to the manifest's folder) read as text of at most `limit` bytes.
    /// Returns the resolved path too.
    pub fn read(
        &self,
        path: &str,
        limit: u64,
        what: &'static str,
    ) -> (PathBuf, Result<String, crate::input_file::InputFileError>) {
        let resolved = self.manifest_dir.join(path);
        self.read.borrow_mut().push(resolved.clone());
        let text = crate::input_file::read_to_string(&resolved, limit, what);
        (resolved, text)
    }
}

/// Steps, guidance and draw resolution, as the Diffusion and Server generators take them.
pub fn check_sampling(
    steps: u32,
    guidance: f32,
    resolution: Option<(u32, u32)>,
) -> Result<(), Refusal> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(Refusal::new(
            "steps",
            format!("{steps} diffusion steps is out of range"),
            "steps",
            format!("use 1 to {MAX_STEPS} steps (1–4 for Turbo models, 20–50 for others)"),
        ));
    }
    if !guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(Refusal::new(
            "guidance",
            format!("guidance {guidance} is out of range"),
            "guidance",
            format!(
                "use a guidance scale from 0 to {MAX_GUIDANCE} (0 or 1 for Turbo models, 5–9 for others)"
            ),
        ));
    }
    if let Some((width, height)) = resolution {
        let drawable = |side: u32| side.is_multiple_of(8) && (8..=MAX_RESOLUTION).contains(&side);
        if !drawable(width) || !drawable(height) {
            return Err(Refusal::new(
                "resolution",
                format!("resolution {width}×{height} cannot be drawn"),
                "not a multiple of 8 in range",
                format!(
                    "each side is a multiple of 8 from 8 to {MAX_RESOLUTION}, as diffusers requires (the latents are 1/8 of the image); e.g. `resolution: (512, 512)`"
                ),
            ));
        }
    }
    Ok(())
}

/// An `init`: a strength in (0, 1] that keeps at least one of `steps`, an image of the
/// sprite's size (scaled up to the drawing without smoothing) or of the drawing's
/// `resolution`, a mask of the image's size.
pub fn check_init(
    init: &InitSpec,
    steps: u32,
    resolution: Option<(u32, u32)>,
    (sprite_width, sprite_height): (u32, u32),
) -> Result<(), Refusal> {
    let strength = init.strength;
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Refusal::new(
            "init",
            format!("has an init strength of {strength}, outside (0, 1]"),
            "strength out of range",
            "use a strength above 0 and at most 1: 0.3 keeps most of the image, 1 redraws it all",
        ));
    }
    if ((f64::from(steps) * strength) as u64) == 0 {
        return Err(Refusal::new(
            "init",
            format!(
                "runs no step: {} steps at strength {strength} keep int(steps × strength) = 0 of them",
                steps
            ),
            "no step runs",
            format!(
                "raise the strength to at least {:.2} or the generator's steps",
                1.0 / f64::from(steps)
            ),
        ));
    }
    let (width, height) = init.image.size;
    let sprite = (sprite_width, sprite_height);
    if init.image.size != sprite && Some(init.image.size) != resolution {
        let drawing = match resolution {
            Some((w, h)) => format!(
                "the sprite's {sprite_width}×{sprite_height} or the drawing's resolution {w}×{h}"
            ),
            None => format!(
                "the sprite's {sprite_width}×{sprite_height} (or set the generator's `resolution` to the image's size)"
            ),
        };
        return Err(Refusal::new(
            "init",
            format!(
                "has an init image of {width}×{height} ({}), which is neither {drawing}",
                init.image.path
            ),
            "size does not match",
            "draw the sketch at the sprite's size (it is scaled up to the drawing without smoothing) or at the drawing's resolution",
        ));
    }
    if let Some(mask) = &init.mask
        && mask.size != init.image.size
    {
        return Err(Refusal::new(
            "init",
            format!(
                "has a mask of {}×{} ({}) for an init image of {width}×{height}",
                mask.size.0, mask.size.1, mask.path
            ),
            "mask size does not match",
            "make the mask the same size as the init image (white where the drawing repaints)",
        ));
    }
    Ok(())
}
