//! The tools' arguments, as assistants see them (their JSON schemas).

use rmcp::schemars;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct Generate {
    /// Only these sprites (names in sprites.ron); every stale sprite when left out. The
    /// live atlases are published when no other sprite is left stale.
    pub sprites: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct GameScreenshot {
    /// Nearest-neighbour scale factor (1 to 8); 1 when left out.
    pub scale: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SpriteName {
    /// The sprite's name in sprites.ron.
    pub name: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SetSprite {
    /// The sprite's name in sprites.ron; a new sprite is added when there is none.
    pub name: String,
    /// What to draw.
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    /// Animation frames.
    pub frames: Option<u32>,
    /// `[width, height]` in pixels.
    pub size: Option<[u32; 2]>,
    /// The atlas it goes to (declared in sprites.ron).
    pub atlas: Option<String>,
    /// A built-in palette name or a .hex/.gpl file beside sprites.ron.
    pub palette: Option<String>,
    /// Remove the sprite instead (every other argument is ignored).
    pub remove: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Variations {
    /// The sprite's name in sprites.ron.
    pub name: String,
    /// How many seeds to draw (1 to 16); 4 when left out.
    pub count: Option<u32>,
    /// The first seed; the sprite's seed + 1 when left out. Seeds are consecutive.
    pub first_seed: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Pick {
    /// The sprite's name in sprites.ron.
    pub name: String,
    /// The seed to keep (one that `variations` showed).
    pub seed: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Preview {
    /// The sprite's name in sprites.ron.
    pub name: String,
    /// Which frame (0-based); 0 when left out.
    pub frame: Option<u32>,
    /// Nearest-neighbour scale factor (1 to 32); by default the sprite is scaled to about
    /// 256 pixels on its longer side.
    pub scale: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AtlasPage {
    /// The atlas's name in sprites.ron (`main` when the manifest declares none).
    pub atlas: String,
    /// Which page (0-based); 0 when left out.
    pub page: Option<usize>,
}
