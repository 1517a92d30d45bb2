//! Step one of validating a sprite: its fields with `defaults` applied, each remembering
//! whether the sprite or `defaults` wrote it, so that an error points where the value is
//! written. Nothing is checked here; `validate` checks the merged values.

use super::raw::{RawBackground, RawDefaults, RawGenerator, RawLora, RawSprite};
use crate::generate::conditioning::Tiling;

/// A field's value after merging, and who wrote it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Merged<T> {
    /// The sprite's value, else the default's; `None` when neither sets it.
    pub(super) value: Option<T>,
    /// The sprite wrote the value (or neither did): errors point into the sprite.
    pub(super) in_sprite: bool,
}

impl<T> Merged<T> {
    fn of(sprite: Option<T>, default: Option<T>) -> Self {
        Merged {
            in_sprite: sprite.is_some() || default.is_none(),
            value: sprite.or(default),
        }
    }
}

/// One sprite's fields, defaults applied. Fields that `defaults` cannot set (prompt,
/// frames) and the palette (a default palette is loaded once, not per sprite) are the
/// sprite's own.
pub(super) struct MergedSprite<'r> {
    pub(super) prompt: &'r str,
    pub(super) negative_prompt: Merged<&'r str>,
    pub(super) seed: Merged<u64>,
    pub(super) size: Merged<(u32, u32)>,
    pub(super) frames: Option<u32>,
    pub(super) atlas: Merged<&'r str>,
    pub(super) generator: Merged<&'r RawGenerator>,
    pub(super) loras: Merged<&'r [RawLora]>,
    pub(super) palette: Option<&'r str>,
    pub(super) max_colors: Merged<u32>,
    pub(super) background: Merged<&'r RawBackground>,
    pub(super) outline: Merged<&'r str>,
    pub(super) tiling: Merged<Tiling>,
}

impl<'r> MergedSprite<'r> {
    pub(super) fn of(sprite: &'r RawSprite, defaults: &'r RawDefaults) -> Self {
        MergedSprite {
            prompt: &sprite.prompt,
            negative_prompt: Merged::of(
                sprite.negative_prompt.as_deref(),
                defaults.negative_prompt.as_deref(),
            ),
            seed: Merged::of(sprite.seed, defaults.seed),
            size: Merged::of(sprite.size, defaults.size),
            frames: sprite.frames,
            atlas: Merged::of(sprite.atlas.as_deref(), defaults.atlas.as_deref()),
            generator: Merged::of(sprite.generator.as_ref(), defaults.generator.as_ref()),
            loras: Merged::of(sprite.loras.as_deref(), defaults.loras.as_deref()),
            palette: sprite.palette.as_deref(),
            max_colors: Merged::of(sprite.max_colors, defaults.max_colors),
            background: Merged::of(sprite.background.as_ref(), defaults.background.as_ref()),
            outline: Merged::of(sprite.outline.as_deref(), defaults.outline.as_deref()),
            tiling: Merged::of(sprite.tiling, defaults.tiling),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sprite_wins_and_says_where_each_value_came_from() {
        assert_eq!(
            Merged::of(Some(1), Some(2)),
            Merged {
                value: Some(1),
                in_sprite: true
            }
        );
        assert_eq!(
            Merged::of(None, Some(2)),
            Merged {
                value: Some(2),
                in_sprite: false
            }
        );
        // Written nowhere: an error about the missing value belongs to the sprite.
        assert_eq!(
            Merged::<u32>::of(None, None),
            Merged {
                value: None,
                in_sprite: true
            }
        );
    }
}
