//! Headless Bevy apps with hand-written sprite sets (what `sprites!` generates, written
//! out): the plugin decodes the embedded pages, hands out the right handles, and keeps
//! trimmed sprites anchored at their untrimmed place.

use bevy::prelude::*;
use bevy::sprite::Anchor;
use pixelgen::{
    Animation, AtlasData, AtlasPages, Atlases, Page, Pivot, SpriteIndex, SpriteSet, SpriteSlot,
    SpritesPlugin, Trim,
};

/// A 4×2 page: a red 2×2 square at x 0..2; a green pixel at (2, 0) and a blue one at
/// (3, 1).
const PNG: &[u8] = include_bytes!("fixtures/page.png");

/// Two atlases over the same page, as two crates' atlases would be.
struct Game;
impl SpriteSet for Game {
    const ATLASES: &'static [AtlasPages] = &[
        AtlasPages {
            name: "characters",
            pages: Characters::PAGES,
            sprites: &[
                SpriteSlot {
                    name: "sparkle",
                    page: 0,
                    first: 1,
                    len: 2,
                },
                SpriteSlot {
                    name: "square",
                    page: 0,
                    first: 0,
                    len: 1,
                },
            ],
        },
        AtlasPages {
            name: "items",
            pages: Items::PAGES,
            sprites: &[SpriteSlot {
                name: "gem",
                page: 0,
                first: 0,
                len: 1,
            }],
        },
    ];
}

struct Characters;
impl AtlasData for Characters {
    type Set = Game;
    const ORDINAL: usize = 0;
    const NAME: &'static str = "characters";
    const PAGES: &'static [Page] = &[Page {
        png: PNG,
        size: (4, 2),
        // The square, untrimmed; the green pixel as the top-left of a 4×4 frame whose
        // trimmed rect starts at (1, 1).
        rects: &[[0, 0, 2, 2], [2, 0, 1, 1], [3, 1, 1, 1]],
        trims: &[
            Trim {
                x: 0,
                y: 0,
                frame_width: 2,
                frame_height: 2,
            },
            Trim {
                x: 1,
                y: 1,
                frame_width: 4,
                frame_height: 4,
            },
            Trim {
                x: 3,
                y: 3,
                frame_width: 4,
                frame_height: 4,
            },
        ],
    }];
}

struct Items;
impl AtlasData for Items {
    type Set = Game;
    const ORDINAL: usize = 1;
    const NAME: &'static str = "items";
    const PAGES: &'static [Page] = &[Page {
        png: PNG,
        size: (4, 2),
        rects: &[[3, 1, 1, 1]],
        trims: &[Trim {
            x: 0,
            y: 0,
            frame_width: 1,
            frame_height: 1,
        }],
    }];
}

const SQUARE: SpriteIndex<Characters> = SpriteIndex::new(0, 0);
const SPARKLE: Animation<Characters> = Animation::new(0, 1, 2);
const GEM: SpriteIndex<Items> = SpriteIndex::new(0, 0);

fn app() -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default_nearest(),
        SpritesPlugin::<Game>::new(),
    ));
    app.finish();
    app.update();
    app
}

fn pixel(image: &Image, x: u32, y: u32) -> [u8; 4] {
    let data = image.data.as_ref().expect("CPU-side pixels");
    let at = ((y * image.width() + x) * 4) as usize;
    [data[at], data[at + 1], data[at + 2], data[at + 3]]
}

#[test]
fn the_plugin_decodes_every_page_and_its_layout() {
    let app = app();
    let atlases = app.world().resource::<Atlases<Game>>();
    let images = app.world().resource::<Assets<Image>>();
    let layouts = app.world().resource::<Assets<TextureAtlasLayout>>();

    let image = images.get(&atlases.image::<Characters>(0)).expect("loaded");
    assert_eq!((image.width(), image.height()), (4, 2));
    assert_eq!(pixel(image, 1, 1), [255, 0, 0, 255]);
    assert_eq!(pixel(image, 2, 0), [0, 255, 0, 255]);
    assert_eq!(pixel(image, 3, 1), [0, 0, 255, 255]);
    assert_eq!(pixel(image, 3, 0), [0, 0, 0, 0]);

    let layout = layouts
        .get(&atlases.layout::<Characters>(0))
        .expect("loaded");
    assert_eq!(layout.size, UVec2::new(4, 2));
    assert_eq!(layout.textures[SQUARE.index()], SQUARE.rect());
    assert_eq!(layout.textures[2], URect::new(3, 1, 4, 2));

    // Each atlas has its own handles, even over equal pages.
    assert_ne!(atlases.layout::<Characters>(0), atlases.layout::<Items>(0));
    let items = layouts.get(&atlases.layout::<Items>(0)).expect("loaded");
    assert_eq!(items.textures, [GEM.rect()]);
}

#[test]
fn a_sprite_is_anchored_at_its_untrimmed_place_and_follows_its_frame() {
    let mut app = app();
    let atlases = app.world().resource::<Atlases<Game>>().clone();
    let square = app.world_mut().spawn(atlases.sprite(SQUARE)).id();
    let sparkle = app.world_mut().spawn(atlases.sprite(SPARKLE.frame(0))).id();
    app.update();
    let anchor = |app: &App, entity| app.world().get::<Anchor>(entity).copied().unwrap();

    // Untrimmed: the centre.
    assert_eq!(anchor(&app, square).0, Vec2::ZERO);
    // A 1×1 rect at (1, 1) of a 4×4 frame: the frame's centre (2, 2) lies one pixel
    // right of and below the rect's centre (1.5, 1.5) in rect units.
    assert_eq!(anchor(&app, sparkle).0, Vec2::new(0.5, -0.5));
    assert_eq!(
        anchor(&app, sparkle),
        SPARKLE.frame(0).anchor(),
        "the plugin and the index agree"
    );

    // The next frame is cut elsewhere in its frame: switching the index is enough.
    app.world_mut()
        .get_mut::<Sprite>(sparkle)
        .unwrap()
        .texture_atlas
        .as_mut()
        .unwrap()
        .index = SPARKLE.frame(1).index();
    app.update();
    assert_eq!(anchor(&app, sparkle).0, Vec2::new(-1.5, 1.5));

    // A pivot at the frame's bottom centre.
    app.world_mut()
        .entity_mut(square)
        .insert(Pivot(Vec2::new(0.0, -0.5)));
    app.update();
    assert_eq!(anchor(&app, square).0, Vec2::new(0.0, -0.5));
}

#[test]
fn sprites_of_other_atlases_are_left_alone() {
    let mut app = app();
    let foreign = app
        .world_mut()
        .spawn((Sprite::default(), Anchor(Vec2::new(0.25, 0.25))))
        .id();
    app.update();
    assert_eq!(
        app.world().get::<Anchor>(foreign).unwrap().0,
        Vec2::new(0.25, 0.25)
    );
}

#[test]
#[should_panic(expected = "needs bevy's AssetPlugin and ImagePlugin")]
fn without_the_asset_plugin_the_panic_says_what_to_add() {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, SpritesPlugin::<Game>::new()));
    app.finish();
}

#[test]
#[should_panic(expected = "needs bevy's ImagePlugin")]
fn without_the_image_plugin_the_panic_says_what_to_add() {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        SpritesPlugin::<Game>::new(),
    ));
    app.finish();
}

/// A published index for `Game` in `dir`: both atlases over one 4×2 page whose square is
/// `square` coloured, with the sprites `slots` gives the characters atlas, and the
/// sparkle's first frame trimmed at `sparkle_trim`.
fn publish(
    dir: &std::path::Path,
    square: [u8; 4],
    sparkle_trim: [u32; 4],
    square_frames: usize,
) -> std::path::PathBuf {
    let page = image::RgbaImage::from_fn(4, 2, |x, y| match (x, y) {
        (0..=1, _) => image::Rgba(square),
        (2, 0) => image::Rgba([0, 255, 0, 255]),
        (3, 1) => image::Rgba([0, 0, 255, 255]),
        _ => image::Rgba([0, 0, 0, 0]),
    });
    let png = dir.join(format!("page-{}.png", square[0]));
    page.save(&png).unwrap();
    let square_frames: Vec<usize> = (0..square_frames).collect();
    let index = serde_json::json!({
        "version": 2,
        "stamp": format!("{square:?}{sparkle_trim:?}{square_frames:?}"),
        "atlases": [
            {
                "name": "characters", "module": "characters",
                "pages": [{ "image": png, "width": 4, "height": 2,
                    "rects": [[0, 0, 2, 2], [2, 0, 1, 1], [3, 1, 1, 1]],
                    "trims": [[0, 0, 2, 2], sparkle_trim, [3, 3, 4, 4]] }],
                "sprites": [
                    { "name": "sparkle", "constant": "SPARKLE", "page": 0, "frames": [1, 2], "animated": true },
                    { "name": "square", "constant": "SQUARE", "page": 0, "frames": square_frames, "animated": false }
                ]
            },
            {
                "name": "items", "module": "items",
                "pages": [{ "image": png, "width": 4, "height": 2,
                    "rects": [[3, 1, 1, 1]], "trims": [[0, 0, 1, 1]] }],
                "sprites": [{ "name": "gem", "constant": "GEM", "page": 0, "frames": [0], "animated": false }]
            }
        ]
    });
    let path = dir.join("index.json");
    // Written whole and renamed in, as pixelgen publishes.
    let temp = dir.join("index.json.tmp");
    std::fs::write(&temp, index.to_string()).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    path
}

/// Changing the published files changes the pixels of the loaded atlas (same handles)
/// and the anchors of sprites on screen within a few frames; a publication whose sprites
/// no longer match the compiled constants is not applied.
#[test]
fn published_atlases_replace_the_loaded_ones_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let index = publish(dir.path(), [255, 0, 0, 255], [1, 1, 4, 4], 1);
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default_nearest(),
        SpritesPlugin::<Game>::new().with_live_index(&index),
    ));
    app.finish();
    app.update();
    let atlases = app.world().resource::<Atlases<Game>>().clone();
    let handle = atlases.image::<Characters>(0);
    let sparkle = app.world_mut().spawn(atlases.sprite(SPARKLE.frame(0))).id();
    app.update();
    let square_pixel = |app: &App| {
        pixel(
            app.world()
                .resource::<Assets<Image>>()
                .get(&handle)
                .unwrap(),
            1,
            1,
        )
    };
    let anchor = |app: &App| app.world().get::<Anchor>(sparkle).copied().unwrap().0;
    assert_eq!(square_pixel(&app), [255, 0, 0, 255]);
    assert_eq!(anchor(&app), Vec2::new(0.5, -0.5));

    // New pixels and a new trim for the sparkle's first frame.
    publish(dir.path(), [255, 255, 0, 255], [0, 0, 4, 4], 1);
    let mut frames = 0;
    while square_pixel(&app) != [255, 255, 0, 255] {
        app.update();
        frames += 1;
        assert!(frames <= 3, "not reloaded after {frames} frames");
    }
    assert_eq!(atlases.image::<Characters>(0), handle, "the same handle");
    // A 1×1 rect at (0, 0) of a 4×4 frame: the frame's centre is 1.5 px right, 1.5 down.
    assert_eq!(anchor(&app), Vec2::new(1.5, -1.5));

    // The square grew a frame: the constants would be wrong, so nothing is applied.
    publish(dir.path(), [0, 255, 255, 255], [1, 1, 4, 4], 2);
    for _ in 0..3 {
        app.update();
    }
    assert_eq!(square_pixel(&app), [255, 255, 0, 255]);
    assert_eq!(anchor(&app), Vec2::new(1.5, -1.5));
}
