//! `sprites!()`: turns the index that `pixelgen-build` wrote to OUT_DIR into a module of
//! data — atlas marker types, embedded pages, typed constants — that refers to the types
//! of the `pixelgen` crate. Games call it as `pixelgen::sprites!()`, so they depend on
//! `pixelgen` (which re-exports this macro), not on this crate.
//!
//! ```ignore
//! pixelgen::sprites!();
//!
//! fn setup(mut commands: Commands, atlases: Res<sprites::Atlases>) {
//!     commands.spawn(atlases.sprite(sprites::characters::HERO));
//!     let walk = sprites::characters::HERO_WALK; // an Animation: walk.frame(i)
//! }
//! ```
//!
//! Invariant: no runtime code is generated here; behaviour lives in `pixelgen`, where it
//! has documentation and tests. The macro refuses an index whose sprites point at missing
//! pages or non-contiguous frames, so the constants it emits are always in range.

use std::path::PathBuf;

use pixelgen_index::{Index, IndexedAtlas};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};

/// Generates `pub mod sprites` (or the module named in the call: `sprites!(art)`) from
/// the sprite index in OUT_DIR.
#[proc_macro]
pub fn sprites(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let module = if input.is_empty() {
        syn::Ident::new("sprites", Span::call_site())
    } else {
        match syn::parse::<syn::Ident>(input) {
            Ok(ident) => ident,
            Err(e) => return e.to_compile_error().into(),
        }
    };
    let runtime = match runtime_path(proc_macro_crate::crate_name("pixelgen")) {
        Ok(path) => path,
        Err(message) => {
            return syn::Error::new(Span::call_site(), message)
                .to_compile_error()
                .into();
        }
    };
    match expand(&module, std::env::var_os("OUT_DIR"), &runtime) {
        Ok(tokens) => tokens.into(),
        Err(message) => syn::Error::new(Span::call_site(), message)
            .to_compile_error()
            .into(),
    }
}

/// The path the generated code names `pixelgen`'s types by: `::pixelgen`, or the name the
/// calling crate gave it in its Cargo.toml (`pg = { package = "pixelgen", … }`).
fn runtime_path(
    found: Result<proc_macro_crate::FoundCrate, proc_macro_crate::Error>,
) -> Result<TokenStream, String> {
    match found {
        // `Itself` is what a doc test or example of `pixelgen` sees (only its integration
        // tests are told apart); those are separate crates that name it `::pixelgen`, and
        // pixelgen's library never calls the macro.
        Ok(proc_macro_crate::FoundCrate::Itself) => Ok(quote!(::pixelgen)),
        Ok(proc_macro_crate::FoundCrate::Name(name)) => {
            let ident = syn::Ident::new(&name, Span::call_site());
            Ok(quote!(::#ident))
        }
        Err(e) => Err(format!(
            "pixelgen: the code `sprites!()` generates uses the runtime types of the `pixelgen` crate, \
             which this crate does not depend on ({e}). Add `pixelgen` to [dependencies] (it \
             re-exports this macro: call it as `pixelgen::sprites!()`)"
        )),
    }
}

fn expand(
    module: &syn::Ident,
    out_dir: Option<std::ffi::OsString>,
    rt: &TokenStream,
) -> Result<TokenStream, String> {
    let out_dir = out_dir.ok_or(
        "pixelgen: OUT_DIR is not set, so there is no sprite index to read: the crate needs a build script. \
         Add `pixelgen-build` to [build-dependencies] and a build.rs with \
         `fn main() { pixelgen_build::Build::new().run_or_exit() }`",
    )?;
    let index_path = Index::path_in(&PathBuf::from(out_dir));
    if !index_path.is_file() {
        return Err(format!(
            "pixelgen: no sprite index at {}: build.rs did not run pixelgen. Add `pixelgen-build` to \
             [build-dependencies] and call `pixelgen_build::Build::new().run_or_exit()` from build.rs",
            index_path.display()
        ));
    }
    let index = Index::read(&index_path)?;
    let index_literal = path_literal(&index_path)?;

    let atlas_modules = index
        .atlases
        .iter()
        .enumerate()
        .map(|(ordinal, atlas)| atlas_module(ordinal, atlas, rt))
        .collect::<Result<Vec<_>, String>>()?;
    let atlas_types: Vec<TokenStream> = index
        .atlases
        .iter()
        .map(|a| {
            let m = format_ident!("{}", a.module);
            quote!(#m::Atlas)
        })
        .collect();

    let atlas_entries = index.atlases.iter().zip(&atlas_types).map(|(atlas, ty)| {
        let name = &atlas.name;
        let slots = atlas.sprites.iter().map(|sprite| {
            let (name, page, len) = (&sprite.name, sprite.page, sprite.frames.len());
            let first = sprite.frames.first().copied().unwrap_or(0);
            quote!(#rt::SpriteSlot { name: #name, page: #page, first: #first, len: #len })
        });
        quote!(#rt::AtlasPages {
            name: #name,
            pages: <#ty as #rt::AtlasData>::PAGES,
            sprites: &[#(#slots),*],
        })
    });
    // Dev builds of the game reload the published atlases; release builds embed only.
    let live_index = match &index.live_index {
        Some(path) => {
            let literal = path_literal(path)?;
            quote!(if cfg!(debug_assertions) { Some(#literal) } else { None })
        }
        None => quote!(None),
    };

    Ok(quote! {
        /// Sprites declared in `sprites.ron`, generated by `pixelgen::sprites!` from the
        /// index `pixelgen-build` wrote; the types are `pixelgen`'s.
        #[allow(dead_code)]
        pub mod #module {
            // Makes the compiler rebuild this crate whenever the build writes a new index.
            const _: &[u8] = include_bytes!(#index_literal);

            pub use #rt::{Animation, Page, Pivot, SpriteIndex, Trim};

            /// An atlas of this module: `fn f<A: sprites::AtlasData>(atlases: &sprites::Atlases,
            /// index: SpriteIndex<A>)` takes an index of any of them.
            pub trait AtlasData: #rt::AtlasData<Set = Set> {}
            impl<A: #rt::AtlasData<Set = Set>> AtlasData for A {}

            /// The sprite set of this module: every atlas, by ordinal.
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub struct Set;
            impl #rt::SpriteSet for Set {
                const ATLASES: &'static [#rt::AtlasPages] = &[#(#atlas_entries),*];
                const LIVE_INDEX: Option<&'static str> = #live_index;
            }

            /// Handles to every atlas page's image and layout; inserted by [`SpritesPlugin`].
            pub type Atlases = #rt::Atlases<Set>;
            /// Adds [`Atlases`] and keeps trimmed sprites at their untrimmed place.
            pub type SpritesPlugin = #rt::SpritesPlugin<Set>;
            /// The plugin, as a value: `app.add_plugins(sprites::SpritesPlugin)`.
            #[allow(non_upper_case_globals)]
            pub const SpritesPlugin: SpritesPlugin = #rt::SpritesPlugin::new();

            #(#atlas_modules)*
        }
    })
}

fn atlas_module(
    ordinal: usize,
    atlas: &IndexedAtlas,
    rt: &TokenStream,
) -> Result<TokenStream, String> {
    let module = syn::parse_str::<syn::Ident>(&atlas.module)
        .map_err(|e| format!("pixelgen: atlas module `{}`: {e}", atlas.module))?;
    let name = &atlas.name;
    let mut pages = Vec::new();
    for page in &atlas.pages {
        let png = path_literal(&page.image)?;
        let (width, height) = (page.width, page.height);
        let rects = page
            .rects
            .iter()
            .map(|[x, y, w, h]| quote!([#x, #y, #w, #h]));
        if page.trims.len() != page.rects.len() {
            return Err(format!(
                "pixelgen: atlas `{name}`: a page has {} rects but {} trims; rebuild",
                page.rects.len(),
                page.trims.len()
            ));
        }
        let trims = page.trims.iter().map(
            |[x, y, w, h]| quote!(#rt::Trim { x: #x, y: #y, frame_width: #w, frame_height: #h }),
        );
        pages.push(quote! {
            #rt::Page {
                png: include_bytes!(#png),
                size: (#width, #height),
                rects: &[#(#rects),*],
                trims: &[#(#trims),*],
            }
        });
    }
    let mut constants = Vec::new();
    for sprite in &atlas.sprites {
        let constant = syn::parse_str::<syn::Ident>(&sprite.constant)
            .map_err(|e| format!("pixelgen: sprite constant `{}`: {e}", sprite.constant))?;
        let doc = format!(
            "`{}` in `sprites.ron` ({} frame(s)).",
            sprite.name,
            sprite.frames.len()
        );
        let page = sprite.page;
        let layout_len = atlas
            .pages
            .get(page)
            .ok_or_else(|| format!("pixelgen: sprite `{}` is on a missing page", sprite.name))?
            .rects
            .len();
        let first = *sprite
            .frames
            .first()
            .ok_or_else(|| format!("pixelgen: sprite `{}` has no frames", sprite.name))?;
        if sprite
            .frames
            .iter()
            .enumerate()
            .any(|(i, f)| *f != first + i || *f >= layout_len)
        {
            return Err(format!(
                "pixelgen: the frames of `{}` are not contiguous in the index",
                sprite.name
            ));
        }
        if sprite.animated {
            let len = sprite.frames.len();
            constants.push(quote! {
                #[doc = #doc]
                pub const #constant: #rt::Animation<Atlas> = #rt::Animation::new(#page, #first, #len);
            });
        } else {
            constants.push(quote! {
                #[doc = #doc]
                pub const #constant: #rt::SpriteIndex<Atlas> = #rt::SpriteIndex::new(#page, #first);
            });
        }
    }
    let sizes: Vec<String> = atlas
        .pages
        .iter()
        .map(|p| format!("{}×{}", p.width, p.height))
        .collect();
    let doc = format!(
        "Atlas `{name}`: {} sprites on {} page(s) of {} pixels.",
        atlas.sprites.len(),
        atlas.pages.len(),
        sizes.join(", ")
    );
    Ok(quote! {
        #[doc = #doc]
        pub mod #module {
            /// Marks indices of this atlas.
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub struct Atlas;
            impl #rt::AtlasData for Atlas {
                type Set = super::Set;
                const ORDINAL: usize = #ordinal;
                const NAME: &'static str = #name;
                const PAGES: &'static [#rt::Page] = &[#(#pages),*];
            }
            #(#constants)*
        }
    })
}

fn path_literal(path: &std::path::Path) -> Result<syn::LitStr, String> {
    let text = path.to_str().ok_or_else(|| {
        format!(
            "pixelgen: the path {} is not UTF-8; move the target directory",
            path.display()
        )
    })?;
    Ok(syn::LitStr::new(text, Span::call_site()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelgen_index::{INDEX_VERSION, IndexedPage, IndexedSprite};

    fn module() -> syn::Ident {
        syn::Ident::new("sprites", Span::call_site())
    }

    #[test]
    fn the_runtime_is_named_as_the_calling_crate_names_it() {
        use proc_macro_crate::FoundCrate;
        let path = |found| runtime_path(found).map(|t| t.to_string());
        assert_eq!(
            path(Ok(FoundCrate::Name("pixelgen".into()))).unwrap(),
            ":: pixelgen"
        );
        assert_eq!(path(Ok(FoundCrate::Name("pg".into()))).unwrap(), ":: pg");
        assert_eq!(path(Ok(FoundCrate::Itself)).unwrap(), ":: pixelgen");
        let missing = path(Err(proc_macro_crate::Error::CrateNotFound {
            crate_name: "pixelgen".into(),
            path: "game/Cargo.toml".into(),
        }))
        .unwrap_err();
        assert!(
            missing.contains("Add `pixelgen` to [dependencies]"),
            "{missing}"
        );
    }

    #[test]
    fn without_out_dir_the_error_says_to_add_a_build_script() {
        let error = expand(&module(), None, &quote!(::pixelgen)).unwrap_err();
        assert!(
            error.contains("build.rs") && error.contains("pixelgen-build"),
            "{error}"
        );
    }

    #[test]
    fn without_an_index_the_error_says_build_rs_did_not_run_pixelgen() {
        let dir = tempfile::tempdir().unwrap();
        let error = expand(&module(), Some(dir.path().into()), &quote!(::pixelgen)).unwrap_err();
        assert!(error.contains("build.rs did not run pixelgen"), "{error}");
    }

    #[test]
    fn generates_typed_constants_per_atlas() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("pixelgen/characters.png");
        std::fs::create_dir_all(png.parent().unwrap()).unwrap();
        std::fs::write(&png, b"png").unwrap();
        let index = Index {
            live_index: Some(dir.path().join("live/pixelgen/index.json")),
            version: INDEX_VERSION,
            stamp: "s".into(),
            atlases: vec![IndexedAtlas {
                name: "characters".into(),
                module: "characters".into(),
                pages: vec![IndexedPage {
                    image: png,
                    width: 64,
                    height: 32,
                    rects: vec![[0, 0, 32, 32], [32, 0, 16, 16], [48, 0, 16, 16]],
                    trims: vec![[0, 0, 32, 32], [1, 2, 18, 20], [0, 0, 16, 16]],
                }],
                sprites: vec![
                    IndexedSprite {
                        name: "hero".into(),
                        constant: "HERO".into(),
                        page: 0,
                        frames: vec![0],
                        animated: false,
                    },
                    IndexedSprite {
                        name: "hero-walk".into(),
                        constant: "HERO_WALK".into(),
                        page: 0,
                        frames: vec![1, 2],
                        animated: true,
                    },
                ],
            }],
        };
        std::fs::write(Index::path_in(dir.path()), serde_json_like(&index)).unwrap();
        let code = expand(&module(), Some(dir.path().into()), &quote!(::pixelgen))
            .unwrap()
            .to_string();
        assert!(code.contains("pub mod characters"), "{code}");
        assert!(code.contains("pub const HERO : :: pixelgen :: SpriteIndex < Atlas > = :: pixelgen :: SpriteIndex :: new (0usize , 0usize)"), "{code}");
        assert!(code.contains("pub const HERO_WALK : :: pixelgen :: Animation < Atlas > = :: pixelgen :: Animation :: new (0usize , 1usize , 2usize)"), "{code}");
        assert!(code.contains("[32u32 , 0u32 , 16u32 , 16u32]"), "{code}");
        assert!(
            code.contains(
                ":: pixelgen :: Trim { x : 1u32 , y : 2u32 , frame_width : 18u32 , frame_height : 20u32 }"
            ),
            "{code}"
        );
    }

    #[test]
    fn a_sprite_on_a_later_page_carries_its_page() {
        let page = |image: &str| IndexedPage {
            image: image.into(),
            width: 8,
            height: 8,
            rects: vec![[0, 0, 8, 8]],
            trims: vec![[0, 0, 8, 8]],
        };
        let atlas = IndexedAtlas {
            name: "big".into(),
            module: "big".into(),
            pages: vec![page("/big.png"), page("/big-1.png")],
            sprites: vec![IndexedSprite {
                name: "tree".into(),
                constant: "TREE".into(),
                page: 1,
                frames: vec![0],
                animated: false,
            }],
        };
        let code = atlas_module(0, &atlas, &quote!(::pixelgen))
            .unwrap()
            .to_string();
        assert!(
            code.contains("SpriteIndex :: new (1usize , 0usize)"),
            "{code}"
        );
        assert!(code.contains("\"/big-1.png\""), "{code}");
    }

    #[test]
    fn non_contiguous_frames_are_refused() {
        let atlas = IndexedAtlas {
            name: "a".into(),
            module: "a".into(),
            pages: vec![IndexedPage {
                image: "/x.png".into(),
                width: 1,
                height: 1,
                rects: vec![[0, 0, 1, 1]; 3],
                trims: vec![[0, 0, 1, 1]; 3],
            }],
            sprites: vec![IndexedSprite {
                name: "s".into(),
                constant: "S".into(),
                page: 0,
                frames: vec![0, 2],
                animated: true,
            }],
        };
        assert!(
            atlas_module(0, &atlas, &quote!(::pixelgen))
                .unwrap_err()
                .contains("not contiguous")
        );
    }

    fn serde_json_like(index: &Index) -> String {
        pixelgen_index::to_json(index)
    }
}
