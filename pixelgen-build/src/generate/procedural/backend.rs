//! The procedural generator behind the backend seam.

use image::RgbaImage;

use super::{ProceduralRequest, render};
use crate::generate::batched::{Batched, Generator};
use crate::generate::{
    Backend, Conditioning, Drawer, Frame, GenerateError, GroupInputs, GroupKey, KeyError,
    KeyInputs, KeyParts, ResolvedLora, Workshop, refuse_all, settings,
};
use crate::key::Canonical;
use crate::timings::{Stage, Timings};

/// Version of the procedural generator's drawing code, part of every key it makes:
/// bump it when its pixels change.
pub const PROCEDURAL_VERSION: &str = "procedural-1";

/// The embedded generator (it has no settings).
#[derive(Debug, Default, Clone, Copy)]
pub struct Procedural;

impl Backend for Procedural {
    fn name(&self) -> &'static str {
        "Procedural"
    }

    fn draws_raw_images(&self) -> bool {
        false
    }

    fn key(&self, _: &mut dyn KeyInputs) -> Result<KeyParts, KeyError> {
        Ok(KeyParts {
            generator: Canonical::new()
                .str("procedural")
                .str(PROCEDURAL_VERSION)
                .take(),
            model: None,
            files: Vec::new(),
        })
    }

    fn group(&self, _: &[ResolvedLora], conditioning: &Conditioning) -> GroupKey {
        let mut encoding = Canonical::new();
        conditioning.encode_group(&mut encoding);
        GroupKey::new("procedural", &encoding)
    }

    /// Draws tiles that wrap (`tiling`); nothing else it could follow.
    fn refuses_conditioning(
        &self,
        conditioning: &Conditioning,
        _: (u32, u32),
        _: &settings::SettingsContext<'_>,
    ) -> Option<settings::Refusal> {
        let without_tiling = Conditioning {
            tiling: None,
            ..conditioning.clone()
        };
        refuse_all(self.name(), &without_tiling)
    }

    fn open(
        &self,
        _: &GroupInputs<'_>,
        _: &mut Workshop,
        _: &mut Timings,
    ) -> Result<Box<dyn Drawer>, GenerateError> {
        Ok(Batched::boxed(Procedural))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!("Procedural")
    }

    fn summary(&self) -> String {
        "procedural".into()
    }
}

impl Generator for Procedural {
    fn generate(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, GenerateError> {
        let start = std::time::Instant::now();
        let images = frames
            .iter()
            .map(|frame| {
                render(&ProceduralRequest {
                    prompt: frame.prompt,
                    negative_prompt: frame.negative_prompt,
                    seed: frame.seed,
                    width: frame.width,
                    height: frame.height,
                    frame: frame.frame,
                    frames: frame.frames,
                    tiling: frame.conditioning.tiling,
                })
            })
            .collect();
        timings.add_runs(Stage::Draw, start.elapsed(), frames.len() as u64);
        Ok(images)
    }
}
