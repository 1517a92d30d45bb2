//! pixelgen's runtime: what a Bevy game uses to draw the sprites that `pixelgen-build`
//! made from its `sprites.ron`.
//!
//! The build script packs the sprites into atlas pages and writes an index;
//! [`sprites!`] turns that index into a module of plain data (atlas marker types, embedded
//! pages and typed constants) that refers to the types of this crate:
//!
//! ```ignore
//! use bevy::prelude::*;
//!
//! pixelgen::sprites!();
//!
//! fn main() {
//!     App::new()
//!         .add_plugins((DefaultPlugins.set(ImagePlugin::default_nearest()), sprites::SpritesPlugin))
//!         .add_systems(Startup, setup)
//!         .run();
//! }
//!
//! fn setup(mut commands: Commands, atlases: Res<sprites::Atlases>) {
//!     commands.spawn(Camera2d);
//!     commands.spawn(atlases.sprite(sprites::characters::HERO));
//!     let walk = sprites::characters::HERO_WALK; // an Animation: walk.frame(tick)
//!     commands.spawn(atlases.sprite(walk.frame(0)));
//! }
//! ```
//!
//! The types, from the bottom up:
//! - [`Page`]: one atlas image (PNG bytes, embedded in the binary) with the rect and
//!   [`Trim`] of each layout index.
//! - [`AtlasData`]: an atlas of the game, a marker type per atlas; [`SpriteSet`]: all the
//!   atlases of one `sprites!` module.
//! - [`SpriteIndex`] and [`Animation`]: typed indices into one atlas; an index of one atlas
//!   cannot be used with another.
//! - [`Atlases`]: the resource with the handles of every page's image and layout, and
//!   [`SpritesPlugin`], which inserts it and keeps trimmed sprites at their place.
//!
//! Invariants the generated data upholds (the macro checks them and refuses an index
//! that breaks them): every page has one [`Trim`] per rect; a sprite's frames are
//! contiguous indices on one page; `AtlasData::ORDINAL` is the atlas's position in
//! `SpriteSet::ATLASES`.

use std::marker::PhantomData;

mod live;
#[cfg(feature = "remote")]
pub mod remote;

/// Autotile sets (16-tile corner sets, 47-tile blob sets): a map cell's tile from its
/// neighbourhood, in the order the build lays a set's tiles out.
pub use pixelgen_index::autotile;

use bevy::app::{App, Plugin, PostUpdate, PreUpdate};
use bevy::asset::{AssetId, AssetServer, Assets, Handle, RenderAssetUsages};
use bevy::camera::visibility::VisibilitySystems;
use bevy::ecs::prelude::*;
use bevy::image::{
    CompressedImageFormats, Image, ImageSampler, ImageType, TextureAtlas, TextureAtlasLayout,
    TextureAtlasPlugin,
};
use bevy::math::{URect, UVec2, Vec2};
use bevy::sprite::{Anchor, Sprite};

/// Generates a module of typed sprite constants from the index `pixelgen-build` wrote to
/// OUT_DIR: `pixelgen::sprites!()` makes `mod sprites`, `pixelgen::sprites!(art)` makes
/// `mod art`. See the crate documentation.
pub use pixelgen_macros::sprites;

/// One page (image and layout) of an atlas. An atlas has one page unless its sprites
/// exceed its `max_size`; a sprite's frames always share a page.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// The page PNG, embedded in the binary.
    pub png: &'static [u8],
    /// Width and height in pixels.
    pub size: (u32, u32),
    /// `[x, y, width, height]` of each layout index. Identical frames share a rect.
    pub rects: &'static [[u32; 4]],
    /// Per layout index, where its (trimmed) rect lies in the untrimmed frame.
    pub trims: &'static [Trim],
}

impl Page {
    /// The layout Bevy needs to draw this page's sprites.
    pub fn layout(&self) -> TextureAtlasLayout {
        TextureAtlasLayout {
            size: UVec2::new(self.size.0, self.size.1),
            textures: self.rects.iter().map(|r| rect(*r)).collect(),
        }
    }

    /// Decodes the embedded PNG into a Bevy image with nearest-neighbour sampling.
    ///
    /// # Panics
    /// If the PNG does not decode: the build wrote it in the same compilation as the
    /// code that embeds it, so that is a broken build, not a condition a game handles.
    pub fn image(&self, atlas: &str) -> Image {
        Image::from_buffer(
            self.png,
            ImageType::Extension("png"),
            CompressedImageFormats::NONE,
            true,
            ImageSampler::nearest(),
            RenderAssetUsages::default(),
        )
        .unwrap_or_else(|e| panic!("pixelgen: the embedded atlas `{atlas}` does not decode: {e}"))
    }
}

fn rect([x, y, width, height]: [u32; 4]) -> URect {
    URect::new(x, y, x + width, y + height)
}

/// Where a frame's packed rect lies within its untrimmed frame: atlases store frames
/// without their transparent border.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Trim {
    /// Offset of the rect from the frame's left edge, in pixels.
    pub x: u32,
    /// Offset of the rect from the frame's top edge, in pixels.
    pub y: u32,
    /// The untrimmed frame's width.
    pub frame_width: u32,
    /// The untrimmed frame's height.
    pub frame_height: u32,
}

impl Trim {
    /// The `Anchor` that draws a trimmed `width`×`height` rect where it lies in its
    /// frame, with the entity's transform at `pivot` of the untrimmed frame (anchor units:
    /// -0.5..0.5, y up; `Vec2::ZERO` is the centre).
    ///
    /// ```
    /// use bevy::math::Vec2;
    /// use pixelgen::Trim;
    ///
    /// // A 16×16 frame whose opaque pixels are the 8×8 square at its bottom right.
    /// let trim = Trim { x: 8, y: 8, frame_width: 16, frame_height: 16 };
    /// // The frame's centre is the rect's top-left corner.
    /// assert_eq!(trim.anchor(8, 8, Vec2::ZERO).0, Vec2::new(-0.5, 0.5));
    /// ```
    pub fn anchor(&self, width: u32, height: u32, pivot: Vec2) -> Anchor {
        if width == 0 || height == 0 {
            return Anchor(pivot);
        }
        // The pivot in frame pixels (y down), then relative to the rect.
        let px = (pivot.x + 0.5) * self.frame_width as f32 - self.x as f32;
        let py = (0.5 - pivot.y) * self.frame_height as f32 - self.y as f32;
        Anchor(Vec2::new(px / width as f32 - 0.5, 0.5 - py / height as f32))
    }
}

/// The atlases of one `sprites!` module, by ordinal. Implemented by the generated `Set`.
pub trait SpriteSet: Send + Sync + 'static {
    /// Every atlas's name and pages; [`AtlasData::ORDINAL`] indexes it.
    const ATLASES: &'static [AtlasPages];
    /// The published `index.json` that [`SpritesPlugin`] reloads the atlases from while the
    /// game runs: set by `sprites!` in dev builds (`cargo pixelgen watch` and builds write
    /// it), `None` in release builds, which embed their atlases and watch nothing.
    const LIVE_INDEX: Option<&'static str> = None;
}

/// An atlas's name, pages and sprites, as listed in [`SpriteSet::ATLASES`].
#[derive(Debug, Clone, Copy)]
pub struct AtlasPages {
    pub name: &'static str,
    pub pages: &'static [Page],
    /// Where each sprite's frames are, sorted by name: what the typed constants point at,
    /// and so what a reloaded atlas must keep for them to stay valid.
    pub sprites: &'static [SpriteSlot],
}

/// A sprite's frames in its atlas: layout indices `first..first + len` of page `page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpriteSlot {
    /// The sprite's name in `sprites.ron`.
    pub name: &'static str,
    pub page: usize,
    pub first: usize,
    pub len: usize,
}

/// An atlas of a [`SpriteSet`]: a marker type (`sprites::characters::Atlas`) with the
/// atlas's embedded pages.
pub trait AtlasData: 'static {
    /// The `sprites!` module the atlas belongs to.
    type Set: SpriteSet;
    /// Position in [`SpriteSet::ATLASES`].
    const ORDINAL: usize;
    /// The atlas's name in `sprites.ron`.
    const NAME: &'static str;
    const PAGES: &'static [Page];
}

/// A sprite of atlas `A`: a page and an index into its layout, which cannot be used with
/// another atlas. The constants of a `sprites!` module are of this type.
pub struct SpriteIndex<A: AtlasData> {
    page: usize,
    index: usize,
    atlas: PhantomData<fn() -> A>,
}

impl<A: AtlasData> SpriteIndex<A> {
    /// The sprite at layout `index` of page `page`. Made by `sprites!`, which checks that
    /// both exist; a hand-made index out of range panics where it is used.
    #[doc(hidden)]
    pub const fn new(page: usize, index: usize) -> Self {
        SpriteIndex {
            page,
            index,
            atlas: PhantomData,
        }
    }
    /// The index in its page's `TextureAtlasLayout`.
    pub const fn index(self) -> usize {
        self.index
    }
    /// The page that holds it (see [`Atlases::image`]).
    pub const fn page(self) -> usize {
        self.page
    }
    /// Where its (trimmed) pixels are in the page image.
    pub fn rect(self) -> URect {
        rect(A::PAGES[self.page].rects[self.index])
    }
    /// Where its rect lies in the untrimmed frame.
    pub fn trim(self) -> Trim {
        A::PAGES[self.page].trims[self.index]
    }
    /// The `Anchor` that draws it at its untrimmed place, centred on the transform
    /// ([`SpritesPlugin`] keeps this up to date by itself).
    pub fn anchor(self) -> Anchor {
        self.anchor_at(Vec2::ZERO)
    }
    /// The `Anchor` that puts `pivot` of the untrimmed frame on the transform.
    pub fn anchor_at(self, pivot: Vec2) -> Anchor {
        let r = A::PAGES[self.page].rects[self.index];
        self.trim().anchor(r[2], r[3], pivot)
    }
}

impl<A: AtlasData> Clone for SpriteIndex<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: AtlasData> Copy for SpriteIndex<A> {}
impl<A: AtlasData> PartialEq for SpriteIndex<A> {
    fn eq(&self, other: &Self) -> bool {
        (self.page, self.index) == (other.page, other.index)
    }
}
impl<A: AtlasData> Eq for SpriteIndex<A> {}
impl<A: AtlasData> std::hash::Hash for SpriteIndex<A> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.page, self.index).hash(state)
    }
}
impl<A: AtlasData> std::fmt::Debug for SpriteIndex<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpriteIndex({}#{}.{})", A::NAME, self.page, self.index)
    }
}

/// The frames of an animation of atlas `A`, in order, all on one page: a sprite declared
/// with `frames:` in `sprites.ron` (even `frames: 1`, so that adding frames later does
/// not change the constant's type).
///
/// ```
/// # use pixelgen::*;
/// # struct Set;
/// # impl SpriteSet for Set { const ATLASES: &'static [AtlasPages] = &[]; }
/// # struct Characters;
/// # impl AtlasData for Characters {
/// #     type Set = Set;
/// #     const ORDINAL: usize = 0;
/// #     const NAME: &'static str = "characters";
/// #     const PAGES: &'static [Page] = &[];
/// # }
/// // As `sprites!` writes it for `"walk": (frames: 3, ...)` at layout indices 4..7.
/// const WALK: Animation<Characters> = Animation::new(0, 4, 3);
/// assert_eq!(WALK.len(), 3);
/// // `frame` wraps around, so `frame(tick)` loops.
/// assert_eq!(WALK.frame(3), WALK.frame(0));
/// assert_eq!(WALK.frames().map(|f| f.index()).collect::<Vec<_>>(), [4, 5, 6]);
/// ```
pub struct Animation<A: AtlasData> {
    page: usize,
    first: usize,
    len: usize,
    atlas: PhantomData<fn() -> A>,
}

impl<A: AtlasData> Animation<A> {
    /// `len` frames from layout index `first` of page `page`. Made by `sprites!`.
    ///
    /// # Panics
    /// At compile time in a `const` (at run time otherwise) if `len` is 0: an animation
    /// has at least one frame.
    #[doc(hidden)]
    pub const fn new(page: usize, first: usize, len: usize) -> Self {
        assert!(len > 0, "an animation has at least one frame");
        Animation {
            page,
            first,
            len,
            atlas: PhantomData,
        }
    }
    /// Number of frames (at least 1).
    pub const fn len(self) -> usize {
        self.len
    }
    /// Always false: an animation has at least one frame.
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }
    /// Frame `i`, wrapping around, so `frame(tick)` loops the animation.
    pub const fn frame(self, i: usize) -> SpriteIndex<A> {
        SpriteIndex::new(self.page, self.first + i % self.len)
    }
    /// The frames in order.
    pub fn frames(self) -> impl Iterator<Item = SpriteIndex<A>> {
        (0..self.len).map(move |i| self.frame(i))
    }
}

impl<A: AtlasData> Clone for Animation<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: AtlasData> Copy for Animation<A> {}
impl<A: AtlasData> PartialEq for Animation<A> {
    fn eq(&self, other: &Self) -> bool {
        (self.page, self.first, self.len) == (other.page, other.first, other.len)
    }
}
impl<A: AtlasData> Eq for Animation<A> {}
impl<A: AtlasData> std::fmt::Debug for Animation<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Animation({}#{}.{}..{})",
            A::NAME,
            self.page,
            self.first,
            self.first + self.len
        )
    }
}

/// Where a pixelgen sprite's transform sits in its *untrimmed* frame, in anchor units
/// (-0.5..0.5, y up); without it, the centre. Use this instead of `Anchor`:
/// [`SpritesPlugin`] sets the `Anchor` of every sprite showing one of its atlases from its
/// frame's trim and this pivot.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct Pivot(pub Vec2);

/// Handles to every atlas page's image and layout of the sprite set `S`; inserted by
/// [`SpritesPlugin`]. A `sprites!` module names it `sprites::Atlases`.
#[derive(Resource)]
pub struct Atlases<S: SpriteSet> {
    /// By atlas ordinal, then page.
    images: Vec<Vec<Handle<Image>>>,
    layouts: Vec<Vec<Handle<TextureAtlasLayout>>>,
    /// By atlas ordinal, then page, then layout index: the rects and trims shown now (the
    /// embedded ones, or a reloaded atlas's).
    rects: Vec<Vec<Vec<[u32; 4]>>>,
    trims: Vec<Vec<Vec<Trim>>>,
    set: PhantomData<fn() -> S>,
}

impl<S: SpriteSet> Clone for Atlases<S> {
    fn clone(&self) -> Self {
        Atlases {
            images: self.images.clone(),
            layouts: self.layouts.clone(),
            rects: self.rects.clone(),
            trims: self.trims.clone(),
            set: PhantomData,
        }
    }
}

impl<S: SpriteSet> std::fmt::Debug for Atlases<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Atlases")
            .field("images", &self.images)
            .field("layouts", &self.layouts)
            .finish()
    }
}

impl<S: SpriteSet> Atlases<S> {
    /// Decodes the embedded atlases of `S` into `images` and `layouts`.
    pub fn load(
        images: &mut Assets<Image>,
        layouts: &mut Assets<TextureAtlasLayout>,
    ) -> Atlases<S> {
        Atlases {
            images: S::ATLASES
                .iter()
                .map(|atlas| {
                    atlas
                        .pages
                        .iter()
                        .map(|page| images.add(page.image(atlas.name)))
                        .collect()
                })
                .collect(),
            layouts: S::ATLASES
                .iter()
                .map(|atlas| {
                    atlas
                        .pages
                        .iter()
                        .map(|page| layouts.add(page.layout()))
                        .collect()
                })
                .collect(),
            rects: S::ATLASES
                .iter()
                .map(|atlas| atlas.pages.iter().map(|p| p.rects.to_vec()).collect())
                .collect(),
            trims: S::ATLASES
                .iter()
                .map(|atlas| atlas.pages.iter().map(|p| p.trims.to_vec()).collect())
                .collect(),
            set: PhantomData,
        }
    }

    /// A ready `Sprite` showing `index`. [`SpritesPlugin`] sets its `Anchor` so that the
    /// trimmed frame is drawn at its untrimmed place.
    pub fn sprite<A: AtlasData<Set = S>>(&self, index: SpriteIndex<A>) -> Sprite {
        Sprite::from_atlas_image(self.image::<A>(index.page()), self.texture_atlas(index))
    }

    /// The `TextureAtlas` (page layout and index) for `index`.
    pub fn texture_atlas<A: AtlasData<Set = S>>(&self, index: SpriteIndex<A>) -> TextureAtlas {
        TextureAtlas {
            layout: self.layout::<A>(index.page()),
            index: index.index(),
        }
    }

    /// The image of page `page` of atlas `A`.
    pub fn image<A: AtlasData<Set = S>>(&self, page: usize) -> Handle<Image> {
        self.images[A::ORDINAL][page].clone()
    }

    /// The layout of page `page` of atlas `A`.
    pub fn layout<A: AtlasData<Set = S>>(&self, page: usize) -> Handle<TextureAtlasLayout> {
        self.layouts[A::ORDINAL][page].clone()
    }

    /// `(atlas ordinal, page)` of a layout, if it is one of these atlases'.
    fn locate(&self, layout: AssetId<TextureAtlasLayout>) -> Option<(usize, usize)> {
        self.layouts
            .iter()
            .enumerate()
            .find_map(|(ordinal, pages)| {
                pages
                    .iter()
                    .position(|h| h.id() == layout)
                    .map(|page| (ordinal, page))
            })
    }
}

/// Every sprite with its anchor and pivot (change ticks included).
type AnchoredSprites<'w, 's> = Query<
    'w,
    's,
    (
        &'static mut Sprite,
        &'static mut Anchor,
        Option<Ref<'static, Pivot>>,
    ),
>;

/// Keeps every sprite that shows one of the atlases of `S` drawn at its untrimmed place:
/// its `Anchor` follows the frame's trim (and [`Pivot`]), and its image follows the page
/// of its layout. Sprites whose frame or pivot changed are looked at, and all of them
/// after a reload (the resource changed).
fn place_trimmed_sprites<S: SpriteSet>(
    atlases: Option<Res<Atlases<S>>>,
    mut sprites: AnchoredSprites,
) {
    let Some(atlases) = atlases else { return };
    let everything = atlases.is_changed();
    for (sprite, anchor, pivot) in &mut sprites {
        if everything || sprite.is_changed() || pivot.as_ref().is_some_and(|p| p.is_changed()) {
            place(&atlases, sprite, anchor, pivot.as_deref());
        }
    }
}

fn place<S: SpriteSet>(
    atlases: &Atlases<S>,
    mut sprite: Mut<Sprite>,
    mut anchor: Mut<Anchor>,
    pivot: Option<&Pivot>,
) {
    {
        let Some(atlas) = sprite.texture_atlas.as_ref() else {
            return;
        };
        let Some((ordinal, page)) = atlases.locate(atlas.layout.id()) else {
            return;
        };
        let (Some(rect), Some(trim)) = (
            atlases.rects[ordinal][page].get(atlas.index),
            atlases.trims[ordinal][page].get(atlas.index),
        ) else {
            return;
        };
        let wanted = trim.anchor(rect[2], rect[3], pivot.map_or(Vec2::ZERO, |p| p.0));
        // Write only on change, so that this does not retrigger itself.
        if *anchor != wanted {
            *anchor = wanted;
        }
        let image = &atlases.images[ordinal][page];
        if sprite.image != *image {
            sprite.image = image.clone();
        }
    }
}

/// Adds the [`Atlases`] resource of `S`, and keeps trimmed sprites at their untrimmed
/// place. Needs `ImagePlugin` (part of `DefaultPlugins`); add it with
/// `ImagePlugin::default_nearest()` for crisp pixels. A `sprites!` module names it
/// `sprites::SpritesPlugin`, a value as well as a type.
///
/// In dev builds it also reloads the atlases that builds and `cargo pixelgen watch`
/// publish ([`SpriteSet::LIVE_INDEX`]): when they change, the images and layouts are
/// replaced in place, so sprites on screen show the new pixels without a restart. The typed
/// indices stay valid as long as the sprites and their frame counts stay the same; when
/// they do not, it logs that a rebuild is needed and keeps showing what it has.
pub struct SpritesPlugin<S: SpriteSet> {
    /// Overrides [`SpriteSet::LIVE_INDEX`] (tests, tools).
    live_index: Option<std::path::PathBuf>,
    set: PhantomData<fn() -> S>,
}

impl<S: SpriteSet> SpritesPlugin<S> {
    pub const fn new() -> Self {
        SpritesPlugin {
            live_index: None,
            set: PhantomData,
        }
    }

    /// Reloads from this `index.json` instead of the one the `sprites!` module names (in
    /// any build).
    pub fn with_live_index(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.live_index = Some(path.into());
        self
    }
}

impl<S: SpriteSet> Default for SpritesPlugin<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SpriteSet> Plugin for SpritesPlugin<S> {
    fn build(&self, app: &mut App) {
        if !app.world().contains_resource::<AssetServer>() {
            panic!(
                "pixelgen: SpritesPlugin needs bevy's AssetPlugin and ImagePlugin: add DefaultPlugins (or both) before it"
            );
        }
        if !app.is_plugin_added::<TextureAtlasPlugin>() {
            app.add_plugins(TextureAtlasPlugin);
        }
        app.add_systems(
            PostUpdate,
            place_trimmed_sprites::<S>.before(VisibilitySystems::CalculateBounds),
        );
        let live_index = self
            .live_index
            .clone()
            .or_else(|| S::LIVE_INDEX.map(std::path::PathBuf::from));
        if let Some(path) = live_index {
            app.insert_resource(live::LiveAtlases::<S>::new(path));
            app.add_systems(PreUpdate, live::reload_live_atlases::<S>);
        }
    }

    fn finish(&self, app: &mut App) {
        let world = app.world_mut();
        if !world.contains_resource::<Assets<Image>>() {
            panic!(
                "pixelgen: SpritesPlugin needs bevy's ImagePlugin: add DefaultPlugins (or ImagePlugin) before it"
            );
        }
        let atlases = world.resource_scope(|world, mut images: Mut<Assets<Image>>| {
            let mut layouts = world.resource_mut::<Assets<TextureAtlasLayout>>();
            Atlases::<S>::load(&mut images, &mut layouts)
        });
        world.insert_resource(atlases);
        #[cfg(feature = "remote")]
        remote::register::<S>(app);
    }
}
