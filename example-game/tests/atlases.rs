//! Headless Bevy: the embedded atlases load through bevy_image's PNG decoding, and every
//! typed index points at the rect holding that sprite's pixels.

use std::path::Path;

use bevy::prelude::*;
use example_game::sprites::{self, AtlasData, Atlases, SpriteIndex, characters, items, tiles};
use pixelgen_test_support::fs::read_json;
use pixelgen_test_support::images;

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
    let lock: serde_json::Value = read_json(&root.join("sprites.lock"));
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
            images::read_rgba(&path)
        })
        .collect()
}

/// The untrimmed frame of `index`, rebuilt from its rect in the page image as Bevy loaded
/// it and its trim.
fn atlas_pixels<A: AtlasData>(app: &App, index: SpriteIndex<A>) -> image::RgbaImage {
    let atlases = app.world().resource::<Atlases>();
    let images = app.world().resource::<Assets<Image>>();
    let layouts = app.world().resource::<Assets<TextureAtlasLayout>>();
    let image = images
        .get(&atlases.image::<A>(index.page()))
        .expect("atlas image loaded");
    let layout = layouts
        .get(&atlases.layout::<A>(index.page()))
        .expect("atlas layout loaded");
    assert_eq!(layout.size, UVec2::new(image.width(), image.height()));
    let rect = layout.textures[index.index()];
    assert_eq!(rect, index.rect(), "layout and typed index agree");
    let trim = index.trim();
    let data = image.data.as_ref().expect("CPU-side pixels");
    image::RgbaImage::from_fn(trim.frame_width, trim.frame_height, |x, y| {
        let inside =
            x >= trim.x && y >= trim.y && x - trim.x < rect.width() && y - trim.y < rect.height();
        if !inside {
            return image::Rgba([0, 0, 0, 0]);
        }
        let (ax, ay) = (rect.min.x + x - trim.x, rect.min.y + y - trim.y);
        let at = ((ay * image.width() + ax) * 4) as usize;
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
    assert_eq!(atlas.layout, atlases.layout::<characters::Atlas>(0));
    assert_eq!(sprite.image, atlases.image::<characters::Atlas>(0));
    assert_ne!(
        atlases.image::<characters::Atlas>(0),
        atlases.image::<items::Atlas>(0)
    );
}

/// Where the top-left corner of the drawn rect lands, relative to the transform (y up),
/// given the sprite's anchor: Bevy puts `anchor` (in rect units) on the transform.
fn drawn_top_left(anchor: Vec2, width: f32, height: f32) -> Vec2 {
    Vec2::new(-(anchor.x + 0.5) * width, (0.5 - anchor.y) * height)
}

#[test]
fn trimmed_frames_are_drawn_at_their_untrimmed_place() {
    let mut app = app();
    // The hero's walk has frames trimmed differently (the atlas stores no transparent border).
    let walk = characters::HERO_WALK;
    let trims: Vec<_> = walk.frames().map(|f| f.trim()).collect();
    assert!(
        walk.frames().any(|f| {
            let (t, r) = (f.trim(), f.rect());
            (r.width(), r.height()) != (t.frame_width, t.frame_height)
        }),
        "some frame is trimmed: {trims:?}"
    );
    let atlases = app.world().resource::<Atlases>().clone();
    let entity = app.world_mut().spawn(atlases.sprite(walk.frame(0))).id();
    let pivoted = app
        .world_mut()
        .spawn((
            atlases.sprite(walk.frame(0)),
            sprites::Pivot(Vec2::new(0.0, -0.5)),
        ))
        .id();
    for i in 0..walk.len() {
        let frame = walk.frame(i);
        for e in [entity, pivoted] {
            let mut sprite = app.world_mut().get_mut::<Sprite>(e).unwrap();
            sprite.texture_atlas = Some(atlases.texture_atlas(frame));
        }
        app.update();
        let (rect, trim) = (frame.rect(), frame.trim());
        let (w, h) = (rect.width() as f32, rect.height() as f32);
        let (fw, fh) = (trim.frame_width as f32, trim.frame_height as f32);
        // Centred: the untrimmed frame's top-left is at (-fw/2, fh/2); the rect is
        // `trim` pixels right of and below it.
        let anchor = app.world().get::<bevy::sprite::Anchor>(entity).unwrap().0;
        assert_eq!(anchor, frame.anchor().0);
        let expected = Vec2::new(-fw / 2.0 + trim.x as f32, fh / 2.0 - trim.y as f32);
        assert!(
            (drawn_top_left(anchor, w, h) - expected).length() < 1e-3,
            "frame {i}: {anchor} puts the rect at {} instead of {expected}",
            drawn_top_left(anchor, w, h)
        );
        // Pivot at the bottom centre: the frame's bottom edge sits on the transform.
        let anchor = app.world().get::<bevy::sprite::Anchor>(pivoted).unwrap().0;
        let expected = Vec2::new(-fw / 2.0 + trim.x as f32, fh - trim.y as f32);
        assert!(
            (drawn_top_left(anchor, w, h) - expected).length() < 1e-3,
            "frame {i} pivoted: {anchor}"
        );
    }
}
