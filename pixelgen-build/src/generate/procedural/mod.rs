//! The embedded `Procedural` generator: deterministic, prompt-driven placeholder
//! pixel art that needs no model, no GPU and no network.
//!
//! How it works:
//! - The prompt is split into lower-case words. Word stems pick a *shape family*
//!   (knight, slime, bat, sword, tree, wall, ...) and colour words pick hues,
//!   bound to the part named right after them ("red cape") or, if none, to the
//!   family's main material ("blue slime").
//! - Each family draws into a grid of material cells (material id + shade
//!   -1/0/+1) with shapes defined in normalised box coordinates, so one
//!   description rasterises at 8×8 as well as at 128×128.
//! - A final pass maps every cell to its material's 3-step ramp (shadow, base,
//!   highlight) and puts a 1-px dark outline around the silhouette.
//!
//! Output must be byte-identical on every machine (the content-addressed cache
//! depends on it), so everything here is integer maths or basic f64 arithmetic:
//! no libm `sin`/`cos`/`powf` (see `cos_turns`), no hash-map iteration, and a
//! hand-written RNG.

use image::{Rgba, RgbaImage};

use crate::generate::conditioning::Tiling;

/// What the generator needs to draw one frame of one sprite.
#[derive(Debug, Clone, Copy)]
pub struct ProceduralRequest<'a> {
    /// What to draw, e.g. "knight with a red cape".
    pub prompt: &'a str,
    /// Things to leave out, e.g. "cape" or a colour to avoid.
    pub negative_prompt: &'a str,
    /// Picks the variation; the same seed always gives the same sprite.
    pub seed: u64,
    /// Frame width in pixels (8..=128 in practice; any value is accepted).
    pub width: u32,
    /// Frame height in pixels (8..=128 in practice; any value is accepted).
    pub height: u32,
    /// 0-based frame index.
    pub frame: u32,
    /// Number of frames of the animation (1 for a still sprite).
    pub frames: u32,
    /// The axes the frame wraps on (a sprite's `tiling`): the canvas is a torus there.
    /// Tiles (grass, dirt, floor, wall) always wrap.
    pub tiling: Option<Tiling>,
}

/// Draws one frame. Background pixels are fully transparent (alpha 0); every
/// other pixel is fully opaque (alpha 255).
pub fn render(request: &ProceduralRequest) -> RgbaImage {
    // Clamp rather than panic: a degenerate size just gives an (almost) empty frame.
    let w = i32::try_from(request.width.clamp(1, 4096)).unwrap_or(1);
    let h = i32::try_from(request.height.clamp(1, 4096)).unwrap_or(1);
    let frames = request.frames.max(1);
    let anim = Anim {
        phase: f64::from(request.frame % frames) / f64::from(frames),
        animated: frames > 1,
    };
    let prompt = Prompt::parse(request.prompt, request.negative_prompt);
    let family = prompt.family();
    let style = Style::parse(&prompt);
    let mut rng = Rng::new(request.seed ^ family.salt());
    let cx = Ctx {
        p: &prompt,
        st: &style,
        anim,
    };
    let mut sc = Scene::new(w, h);
    sc.wrap_on(request.tiling);
    match family {
        Family::Humanoid(role) => humanoid(&mut sc, &cx, &mut rng, role),
        Family::Slime => slime(&mut sc, &cx, &mut rng),
        Family::Bat => bat(&mut sc, &cx, &mut rng),
        Family::Sword => sword(&mut sc, &cx, &mut rng),
        Family::Potion => potion(&mut sc, &cx, &mut rng),
        Family::Coin => coin(&mut sc, &cx, &mut rng),
        Family::Gem => gem(&mut sc, &cx, &mut rng),
        Family::Tree => tree(&mut sc, &cx, &mut rng),
        Family::Rock => rock(&mut sc, &cx, &mut rng),
        Family::Chest => chest(&mut sc, &cx, &mut rng),
        Family::Heart => heart(&mut sc, &cx, &mut rng),
        Family::Key => key(&mut sc, &cx, &mut rng),
        Family::Skull => skull(&mut sc, &cx, &mut rng),
        Family::Grass => grass(&mut sc, &cx, &mut rng),
        Family::Dirt => dirt(&mut sc, &cx, &mut rng),
        Family::Floor => floor(&mut sc, &cx, &mut rng),
        Family::Wall => wall(&mut sc, &cx, &mut rng),
        Family::Creature => creature(&mut sc, &cx, &mut rng),
    }
    sc.into_image(!prompt.neg_has(&["outline", "outlined"]))
}

mod backend;
mod color;
mod creatures;
mod fallback;
mod humanoid;
mod items;
mod prompt;
mod rng;
mod scene;
#[cfg(test)]
mod tests;
mod tiles;

pub use backend::{PROCEDURAL_VERSION, Procedural};
use color::*;
use creatures::*;
use fallback::*;
use humanoid::*;
use items::*;
use prompt::*;
use rng::*;
use scene::*;
use tiles::*;
