//! The sprite checks: each sprite's size, frames, prompt and atlas, that its frames fit
//! one page of that atlas, and the manifest's `atlases` they go in.

use crate::atlas::AtlasOptions;
use crate::identity::{AtlasName, SpriteName};
use crate::manifest::merge::{Merged, MergedSprite};
use crate::manifest::raw::{RawDefaults, RawManifest, RawSprite};
use crate::manifest::{
    AtlasSpec, DEFAULT_ATLAS, MAX_FRAMES, MAX_PAGE_SIDE, MAX_SIDE, MAX_SPACING, SpriteSpec,
    TrainedLoraSpec,
};
use crate::palette::Palette;

use super::{Case, Invalid, SpriteEntry, Validator, occurrences};

impl Validator<'_> {
    pub(super) fn atlases(&self, raw: &RawManifest) -> Result<Vec<AtlasSpec>, Invalid> {
        let mut atlases: Vec<AtlasSpec> = Vec::new();
        for (occurrence_of, (name, atlas)) in occurrences(&raw.atlases.0) {
            let span = self.key_span(name, occurrence_of);
            let module = self.identifier(name, &span, "atlas", Case::Lower)?;
            if occurrence_of > 0 {
                return Err(self
                    .error(span, format!("duplicate atlas name `{name}`"))
                    .label("defined again here")
                    .help("atlas names must be unique")
                    .into());
            }
            if let Some(other) = atlases.iter().find(|a| a.module == module) {
                return Err(self
                    .error(
                        span,
                        format!(
                            "atlas names `{}` and `{name}` both become the Rust module `{module}`",
                            other.name
                        ),
                    )
                    .label("collides once converted")
                    .help("rename one of them")
                    .into());
            }
            let defaults = AtlasOptions::default();
            let at = |field: &str| {
                self.locator
                    .field_after(span.end, field)
                    .map(|f| self.locator.value_after(&f))
                    .unwrap_or(span.clone())
            };
            let (max_width, max_height) = atlas
                .max_size
                .unwrap_or((defaults.max_width, defaults.max_height));
            let page_sides = 1..=MAX_PAGE_SIDE;
            if !page_sides.contains(&max_width) || !page_sides.contains(&max_height) {
                return Err(self
                    .error(
                        at("max_size"),
                        format!("atlas `{name}`: max_size {max_width}×{max_height} is out of range"),
                    )
                    .label("out of range")
                    .help(format!("pages go from (1, 1) to ({MAX_PAGE_SIDE}, {MAX_PAGE_SIDE}) pixels; e.g. `max_size: (2048, 2048)`"))
                    .into());
            }
            for (field, value) in [("padding", atlas.padding), ("extrude", atlas.extrude)] {
                if let Some(pixels) = value.filter(|&p| p > MAX_SPACING) {
                    return Err(self
                        .error(
                            at(field),
                            format!("atlas `{name}`: {field} of {pixels} pixels is out of range"),
                        )
                        .label("out of range")
                        .help(format!("use 0 to {MAX_SPACING} pixels (1 or 2 is usual)"))
                        .into());
                }
            }
            atlases.push(AtlasSpec {
                name: AtlasName::from(name.as_str()),
                module,
                options: AtlasOptions {
                    padding: atlas.padding.unwrap_or(defaults.padding),
                    extrude: atlas.extrude.unwrap_or(defaults.extrude),
                    max_width,
                    max_height,
                    power_of_two: atlas.power_of_two.unwrap_or(defaults.power_of_two),
                    trim: atlas.trim.unwrap_or(defaults.trim),
                },
            });
        }
        Ok(atlases)
    }

    /// Validates one sprite: its fields merged with `defaults`, then each checked.
    pub(super) fn sprite(
        &self,
        entry: SpriteEntry<'_>,
        raw: &RawSprite,
        defaults: &RawDefaults,
        default_palette: Option<&Palette>,
        atlases: &[AtlasSpec],
        trained_loras: &[TrainedLoraSpec],
    ) -> Result<SpriteSpec, Invalid> {
        let merged = MergedSprite::of(raw, defaults);
        let (width, height) = self.size(&entry, merged.size)?;
        let frames = self.frames(&entry, merged.frames)?;
        self.prompt(&entry, merged.prompt)?;
        let atlas = self.sprite_atlas(&entry, merged.atlas, atlases)?;
        let options = atlases
            .iter()
            .find(|a| a.name == atlas)
            .map_or_else(AtlasOptions::default, |a| a.options);
        self.fits_a_page(&entry, &merged, (width, height, frames), &atlas, &options)?;
        let generator = self.generator(&entry, merged.generator)?;
        let loras = self.loras(&entry, merged.loras, trained_loras)?;
        if !loras.is_empty()
            && let Some(refusal) = generator.backend().refuses_loras()
        {
            return Err(self
                .error(
                    self.field_span(&entry, "loras", &merged.loras),
                    format!("sprite `{}` {}", entry.name, refusal.message),
                )
                .label(refusal.label)
                .help(refusal.help)
                .into());
        }
        let conditioning =
            self.conditioning(&entry, raw, merged.tiling, &generator, (width, height))?;
        let palette = match merged.palette {
            Some(name) => Some(self.palette(name, Some(&entry.span))?),
            None => default_palette.cloned(),
        };
        let background = self.background(&entry, merged.background)?;
        let max_colors = self.max_colors(&entry, merged.max_colors)?;
        let outline = match merged.outline.value {
            None => None,
            Some(hex) => Some(self.color(
                hex,
                &entry.span,
                format!("outline `{hex}` is not a colour"),
                "write the outline colour as `outline: \"#1a1c2c\"`",
            )?),
        };
        Ok(SpriteSpec {
            name: SpriteName::from(entry.name),
            constant: entry.constant,
            prompt: merged.prompt.to_string(),
            negative_prompt: merged.negative_prompt.value.unwrap_or_default().to_string(),
            seed: merged.seed.value.unwrap_or(0),
            width,
            height,
            frames,
            animated: merged.frames.is_some(),
            atlas,
            generator,
            loras,
            palette,
            max_colors,
            background,
            outline,
            conditioning,
            span: entry.span,
        })
    }

    fn size(
        &self,
        entry: &SpriteEntry<'_>,
        size: Merged<(u32, u32)>,
    ) -> Result<(u32, u32), Invalid> {
        let name = entry.name;
        let (width, height) = size.value.unwrap_or((32, 32));
        if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
            return Err(self
                .error(self.field_span(entry, "size", &size), format!("sprite `{name}` has size {width}×{height}"))
                .label("out of range")
                .help(format!("sizes go from (1, 1) to ({MAX_SIDE}, {MAX_SIDE}); pixel-art sprites are usually 16 to 64 pixels a side"))
                .into());
        }
        Ok((width, height))
    }

    fn frames(&self, entry: &SpriteEntry<'_>, frames: Option<u32>) -> Result<u32, Invalid> {
        let name = entry.name;
        let count = frames.unwrap_or(1);
        if !(1..=MAX_FRAMES).contains(&count) {
            let written = Merged {
                value: frames,
                in_sprite: true,
            };
            return Err(self
                .error(self.field_span(entry, "frames", &written), format!("sprite `{name}` has {count} frames"))
                .label("out of range")
                .help(format!("an animation has 1 to {MAX_FRAMES} frames; leave `frames` out for a still sprite"))
                .into());
        }
        Ok(count)
    }

    fn prompt(&self, entry: &SpriteEntry<'_>, prompt: &str) -> Result<(), Invalid> {
        if prompt.trim().is_empty() {
            let written = Merged {
                value: Some(prompt),
                in_sprite: true,
            };
            return Err(self
                .error(
                    self.field_span(entry, "prompt", &written),
                    format!("sprite `{}` has an empty prompt", entry.name),
                )
                .label("empty")
                .help("describe the sprite, e.g. `prompt: \"knight with a red cape\"`")
                .into());
        }
        Ok(())
    }

    /// The sprite's atlas, which must be declared (or the implicit default when none is).
    fn sprite_atlas(
        &self,
        entry: &SpriteEntry<'_>,
        atlas: Merged<&str>,
        atlases: &[AtlasSpec],
    ) -> Result<AtlasName, Invalid> {
        let name = AtlasName::from(atlas.value.unwrap_or(DEFAULT_ATLAS));
        let declared = atlases.iter().any(|a| a.name == name);
        let implicit = atlases.is_empty() && name == DEFAULT_ATLAS;
        if declared || implicit {
            return Ok(name);
        }
        let declared: Vec<&str> = atlases.iter().map(|a| a.name.as_str()).collect();
        let help = if declared.is_empty() {
            format!(
                "declare it: `atlases: {{ \"{name}\": () }}`, or leave `atlas` out to use the `{DEFAULT_ATLAS}` atlas"
            )
        } else {
            format!(
                "declared atlases: {}; add `\"{name}\": ()` to `atlases` or fix the name",
                declared.join(", ")
            )
        };
        Err(self
            .error(
                self.field_span(entry, "atlas", &atlas),
                format!(
                    "sprite `{}` uses atlas `{name}`, which is not declared",
                    entry.name
                ),
            )
            .label("unknown atlas")
            .help(help)
            .into())
    }

    /// The sprite's frames, untrimmed and extruded, must fit one page of its atlas side by
    /// side: trimming may make them smaller, but whether a build works must not depend on
    /// the pixels a generator draws.
    fn fits_a_page(
        &self,
        entry: &SpriteEntry<'_>,
        merged: &MergedSprite<'_>,
        (width, height, frames): (u32, u32, u32),
        atlas: &AtlasName,
        options: &AtlasOptions,
    ) -> Result<(), Invalid> {
        let (page_width, page_height) = options.page_limit();
        let extruded = |side: u32| u64::from(side) + 2 * u64::from(options.extrude);
        let (cell_width, cell_height) = (extruded(width), extruded(height));
        let name = entry.name;
        if cell_width > u64::from(page_width) || cell_height > u64::from(page_height) {
            return Err(self
                .error(
                    self.field_span(entry, "size", &merged.size),
                    format!(
                        "sprite `{name}` is {width}×{height} ({cell_width}×{cell_height} with extrusion) and does not fit a page of atlas `{atlas}` (at most {page_width}×{page_height})"
                    ),
                )
                .label("larger than a page")
                .help(format!("raise `max_size` of atlas `{atlas}`, lower its `extrude`, or make the sprite smaller"))
                .into());
        }
        let padding = u64::from(options.padding);
        let across = (u64::from(page_width) + padding) / (cell_width + padding);
        let down = (u64::from(page_height) + padding) / (cell_height + padding);
        if across * down < u64::from(frames) {
            let written = Merged {
                value: merged.frames,
                in_sprite: true,
            };
            return Err(self
                .error(
                    self.field_span(entry, "frames", &written),
                    format!(
                        "the {frames} frames of sprite `{name}` ({cell_width}×{cell_height} each with extrusion, {padding} apart) do not fit together on one page of atlas `{atlas}` (at most {page_width}×{page_height}, room for {})",
                        across * down
                    ),
                )
                .label("a sprite's frames share a page")
                .help(format!("raise `max_size` of atlas `{atlas}`, or use fewer or smaller frames"))
                .into());
        }
        Ok(())
    }
}
