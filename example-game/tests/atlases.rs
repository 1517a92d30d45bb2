//! Headless Bevy: the embedded atlases load through bevy_image's PNG decoding, and every
//! typed index points at the rect holding that sprite's pixels.

use std::path::Path;

use bevy::prelude::*;
use example_game::sprites::{self, AtlasData, Atlases, SpriteIndex, characters, items, tiles};

fn app() -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default_nearest(),
        sprites::SpritesPlugin,
    ));
    app.finish();
    app.update();
    app
}

/// The frames of `sprite` as the cache holds them (found through sprites.lock).
fn cached_frames(sprite: &str) -> Vec<image::RgbaImage> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("sprites.lock")).expect("sprites.lock is committed"),
    )
    .expect("JSON");
    let keys = lock["sprites"][sprite]["keys"]
        .as_array()
        .expect("sprite in lock")
        .clone();
    keys.iter()
        .map(|key| {
            let key = key.as_str().expect("hex key");
            let path = root
                .join("../cache")
                .join(&key[..2])
                .join(format!("{key}.png"));
            image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .into_rgba8()
        })
        .collect()
}

/// The pixels of `index`'s rect in its atlas, as Bevy loaded it.
fn atlas_pixels<A: AtlasData>(app: &App, index: SpriteIndex<A>) -> image::RgbaImage {
    let atlases = app.world().resource::<Atlases>();
    let images = app.world().resource::<Assets<Image>>();
    let layouts = app.world().resource::<Assets<TextureAtlasLayout>>();
    let image = images
        .get(&atlases.image::<A>())
        .expect("atlas image loaded");
    let layout = layouts
        .get(&atlases.layout::<A>())
        .expect("atlas layout loaded");
    assert_eq!(layout.size, UVec2::new(image.width(), image.height()));
    let rect = layout.textures[index.index()];
    assert_eq!(rect, index.rect(), "layout and typed index agree");
    let data = image.data.as_ref().expect("CPU-side pixels");
    image::RgbaImage::from_fn(rect.width(), rect.height(), |x, y| {
        let at = (((rect.min.y + y) * image.width() + rect.min.x + x) * 4) as usize;
        image::Rgba([data[at], data[at + 1], data[at + 2], data[at + 3]])
    })
}

#[test]
fn every_typed_index_maps_to_its_sprite() {
    let app = app();
    assert_eq!(
        atlas_pixels(&app, characters::HERO),
        cached_frames("hero")[0]
    );
    assert_eq!(
        atlas_pixels(&app, items::POTION),
        cached_frames("potion")[0]
    );
    assert_eq!(atlas_pixels(&app, tiles::GRASS), cached_frames("grass")[0]);
    for (name, animation) in [
        ("hero_walk", characters::HERO_WALK),
        ("slime", characters::SLIME),
        ("bat", characters::BAT),
    ] {
        let frames = cached_frames(name);
        assert_eq!(animation.len(), frames.len());
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(
                &atlas_pixels(&app, animation.frame(i)),
                frame,
                "{name} frame {i}"
            );
        }
    }
    let coins = cached_frames("coin");
    assert_eq!(items::COIN.len(), coins.len());
    assert_eq!(
        atlas_pixels(&app, items::COIN.frame(coins.len() + 1)),
        coins[1],
        "frame() wraps around"
    );
}

#[test]
fn sprites_come_ready_to_draw() {
    let app = app();
    let atlases = app.world().resource::<Atlases>();
    let sprite = atlases.sprite(characters::HERO_WALK.frame(1));
    let atlas = sprite.texture_atlas.expect("an atlas sprite");
    assert_eq!(atlas.index, characters::HERO_WALK.frame(1).index());
    assert_eq!(atlas.layout, atlases.layout::<characters::Atlas>());
    assert_eq!(sprite.image, atlases.image::<characters::Atlas>());
    assert_ne!(
        atlases.image::<characters::Atlas>(),
        atlases.image::<items::Atlas>()
    );
}
