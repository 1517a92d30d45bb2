//! A sprite's `init`, `controlnet` and `tiling`: the image files it names exist, are
//! images of a bounded size (read from their headers, nothing decoded), and the sprite's
//! generator can draw what they ask ([`Backend::refuses_conditioning`], placed at the
//! field that asks it).
//!
//! [`Backend::refuses_conditioning`]: crate::generate::Backend::refuses_conditioning

use std::ops::Range;

use crate::generate::GeneratorSpec;
use crate::generate::conditioning::{
    Conditioning, ControlNetSpec, DEFAULT_INPAINT_STRENGTH, DEFAULT_STRENGTH, ImageFile, InitSpec,
    Tiling,
};
use crate::generate::settings::SettingsContext;
use crate::manifest::merge::Merged;
use crate::manifest::raw::RawSprite;

use super::{Invalid, SpriteEntry, Validator};

/// Largest image file a sprite may name (read for its header only; drawing reads it).
const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// Longest side of an image a sprite may name.
const MAX_IMAGE_SIDE: u32 = 8192;

impl Validator<'_> {
    pub(super) fn conditioning(
        &self,
        entry: &SpriteEntry<'_>,
        raw: &RawSprite,
        tiling: Merged<Tiling>,
        generator: &GeneratorSpec,
        size: (u32, u32),
    ) -> Result<Conditioning, Invalid> {
        let init = match &raw.init {
            Some(init) => {
                let image = self.image_file(entry, "init", &init.image, "init image")?;
                let mask = match &init.mask {
                    Some(mask) => Some(self.image_file(entry, "init", mask, "mask")?),
                    None => None,
                };
                let strength = init.strength.unwrap_or(if mask.is_some() {
                    DEFAULT_INPAINT_STRENGTH
                } else {
                    DEFAULT_STRENGTH
                });
                Some(InitSpec {
                    image,
                    strength,
                    mask,
                })
            }
            None => None,
        };
        let controlnets = raw
            .controlnet
            .iter()
            .flatten()
            .map(|controlnet| {
                Ok(ControlNetSpec {
                    model: controlnet.model.clone(),
                    resolved: self.dir.join(&controlnet.model),
                    image: self.image_file(
                        entry,
                        "controlnet",
                        &controlnet.image,
                        "control image",
                    )?,
                    scale: controlnet.scale.unwrap_or(1.0),
                    start: controlnet.start.unwrap_or(0.0),
                    end: controlnet.end.unwrap_or(1.0),
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        let conditioning = Conditioning {
            init,
            controlnets,
            tiling: tiling.value,
        };
        if conditioning.is_empty() {
            return Ok(conditioning);
        }
        let context = SettingsContext::new(self.dir, &self.input_files);
        let Some(refusal) = generator
            .backend()
            .refuses_conditioning(&conditioning, size, &context)
        else {
            return Ok(conditioning);
        };
        let in_sprite = refusal.field != "tiling" || tiling.in_sprite;
        let field_at = self.field_span(
            entry,
            refusal.field,
            &Merged {
                value: Some(()),
                in_sprite,
            },
        );
        let at = refusal
            .literal
            .as_deref()
            .and_then(|literal| self.literal_in(literal, &field_at))
            .unwrap_or(field_at);
        Err(self
            .error(at, format!("sprite `{}` {}", entry.name, refusal.message))
            .label(refusal.label)
            .help(refusal.help)
            .into())
    }

    /// Where the string literal `literal` is inside `within`.
    fn literal_in(&self, literal: &str, within: &Range<usize>) -> Option<Range<usize>> {
        self.locator
            .string_literals(literal)
            .into_iter()
            .find(|r| r.start >= within.start && r.end <= within.end)
    }

    /// The image file at `path` (relative to sprites.ron), written in the sprite's
    /// `field`: its size from its header. Recorded for rerun-if-changed even when it
    /// cannot be read.
    fn image_file(
        &self,
        entry: &SpriteEntry<'_>,
        field: &str,
        path: &str,
        what: &'static str,
    ) -> Result<ImageFile, Invalid> {
        let resolved = self.dir.join(path);
        self.input_files.borrow_mut().push(resolved.clone());
        let field_at = self.field_span(
            entry,
            field,
            &Merged {
                value: Some(()),
                in_sprite: true,
            },
        );
        let at = self.literal_in(path, &field_at).unwrap_or(field_at);
        let refuse = |message: String, label: &'static str| -> Invalid {
            self.error(at.clone(), format!("sprite `{}`: {message}", entry.name))
                .label(label)
                .help("image paths are relative to the folder of sprites.ron; PNG is read (and JPEG, GIF, BMP when pixelgen-build has those image features)")
                .into()
        };
        crate::input_file::check(&resolved, MAX_IMAGE_FILE_BYTES, what)
            .map_err(|e| refuse(format!("the {what}: {e}"), "cannot read this file"))?;
        let (width, height) = image::ImageReader::open(&resolved)
            .and_then(|reader| reader.with_guessed_format())
            .map_err(|e| e.to_string())
            .and_then(|reader| reader.into_dimensions().map_err(|e| e.to_string()))
            .map_err(|e| {
                refuse(
                    format!(
                        "the {what} {} is not an image pixelgen can read: {e}",
                        resolved.display()
                    ),
                    "not a readable image",
                )
            })?;
        if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
            return Err(refuse(
                format!(
                    "the {what} {} is {width}×{height}; images go up to {MAX_IMAGE_SIDE} pixels a side",
                    resolved.display()
                ),
                "image too large",
            ));
        }
        Ok(ImageFile {
            path: path.to_string(),
            resolved,
            size: (width, height),
        })
    }
}
