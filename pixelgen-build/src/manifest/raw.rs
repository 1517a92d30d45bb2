//! The shape of `sprites.ron` as serde reads it: every field optional where `defaults` may give it, maps kept in file order with their duplicates.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::generate::conditioning::Tiling;
use crate::generate::diffusion::Scheduler;
use crate::generate::image_servers::{ServerKind, WorkflowNodes};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "Manifest")]
pub(super) struct RawManifest {
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    #[serde(default)]
    pub(super) atlases: Ordered<RawAtlas>,
    #[serde(default)]
    pub(super) trained_loras: Ordered<RawTrainedLora>,
    pub(super) sprites: Ordered<RawSprite>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "Defaults")]
pub(super) struct RawDefaults {
    pub(super) negative_prompt: Option<String>,
    pub(super) seed: Option<u64>,
    pub(super) size: Option<(u32, u32)>,
    pub(super) atlas: Option<String>,
    pub(super) generator: Option<RawGenerator>,
    pub(super) loras: Option<Vec<RawLora>>,
    pub(super) palette: Option<String>,
    pub(super) max_colors: Option<u32>,
    pub(super) background: Option<RawBackground>,
    pub(super) outline: Option<String>,
    pub(super) tiling: Option<Tiling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "Sprite")]
pub(super) struct RawSprite {
    pub(super) prompt: String,
    pub(super) negative_prompt: Option<String>,
    pub(super) seed: Option<u64>,
    pub(super) size: Option<(u32, u32)>,
    pub(super) frames: Option<u32>,
    pub(super) atlas: Option<String>,
    pub(super) generator: Option<RawGenerator>,
    pub(super) loras: Option<Vec<RawLora>>,
    pub(super) palette: Option<String>,
    pub(super) max_colors: Option<u32>,
    pub(super) background: Option<RawBackground>,
    pub(super) outline: Option<String>,
    pub(super) init: Option<RawInit>,
    pub(super) controlnet: Option<Vec<RawControlNet>>,
    pub(super) tiling: Option<Tiling>,
}

/// `init: (image: "art/sketch.png", strength: 0.6, mask: "art/mask.png")`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "Init")]
pub(super) struct RawInit {
    pub(super) image: String,
    pub(super) strength: Option<f64>,
    pub(super) mask: Option<String>,
}

/// `controlnet: [(model: "controlnets/pose", image: "poses/walk.png", scale: 0.8)]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "ControlNet")]
pub(super) struct RawControlNet {
    pub(super) model: String,
    pub(super) image: String,
    pub(super) scale: Option<f64>,
    pub(super) start: Option<f64>,
    pub(super) end: Option<f64>,
}

/// `(path: "style.safetensors", weight: 0.8)` or `(trained: "style", weight: 0.8)`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename = "Lora")]
pub(super) struct RawLora {
    pub(super) path: Option<String>,
    pub(super) trained: Option<String>,
    #[serde(default = "one")]
    pub(super) weight: f32,
}

/// A LoRA pixelgen trains from a folder of the game's art (`trained_loras: { "name": (...) }`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "TrainedLora")]
pub(super) struct RawTrainedLora {
    pub(super) images: String,
    pub(super) model: String,
    pub(super) rank: Option<u32>,
    pub(super) alpha: Option<f64>,
    pub(super) steps: Option<u32>,
    pub(super) learning_rate: Option<f64>,
    pub(super) batch: Option<u32>,
    pub(super) resolution: Option<(u32, u32)>,
    pub(super) seed: Option<u64>,
    pub(super) caption: Option<String>,
    pub(super) background: Option<String>,
    pub(super) conv: Option<bool>,
    pub(super) text_encoder: Option<bool>,
}

/// Which backend draws a sprite, as written; `validate` turns it into a
/// [`GeneratorSpec`](super::GeneratorSpec).
// Read once per manifest; boxing the Server variant would not make serde's struct
// variant syntax (`Server(url: ...)`) any simpler.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename = "Generator")]
pub(super) enum RawGenerator {
    Procedural,
    Diffusion {
        model: String,
        #[serde(default = "default_steps")]
        steps: u32,
        #[serde(default)]
        guidance: f32,
        #[serde(default)]
        scheduler: Scheduler,
        #[serde(default)]
        resolution: Option<(u32, u32)>,
    },
    /// `Server(url: "http://127.0.0.1:9090", model: "...", steps: 20, ...)`.
    Server {
        url: RawUrls,
        #[serde(default)]
        kind: ServerKind,
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        steps: Option<u32>,
        #[serde(default)]
        guidance: Option<f32>,
        #[serde(default)]
        scheduler: Option<String>,
        #[serde(default)]
        resolution: Option<(u32, u32)>,
        #[serde(default)]
        workflow: Option<String>,
        #[serde(default)]
        inputs: Option<WorkflowNodes>,
    },
}

fn default_steps() -> u32 {
    4
}

/// One server URL or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(super) enum RawUrls {
    One(String),
    Many(Vec<String>),
}

impl RawUrls {
    pub(super) fn list(&self) -> Vec<&str> {
        match self {
            RawUrls::One(url) => vec![url.as_str()],
            RawUrls::Many(urls) => urls.iter().map(String::as_str).collect(),
        }
    }
}

pub(super) fn one() -> f32 {
    1.0
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "Atlas")]
pub(super) struct RawAtlas {
    pub(super) padding: Option<u32>,
    pub(super) extrude: Option<u32>,
    pub(super) max_size: Option<(u32, u32)>,
    pub(super) power_of_two: Option<bool>,
    pub(super) trim: Option<bool>,
}

#[derive(Deserialize, Clone)]
#[serde(rename = "Background")]
pub(super) enum RawBackground {
    Transparent,
    Keep,
    /// `Color("#3a5f0b")`
    Color(String),
}

/// A RON map kept in file order, duplicates included, so that they can be reported.
pub(super) struct Ordered<T>(pub(super) Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of \"name\": (...) entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, T>()? {
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}
