//! `cargo pixelgen mcp`: an MCP server over stdio (rmcp, the official Rust SDK) through
//! which an AI assistant drives a game crate's sprites: lists them with their status, reads
//! one, generates what is stale (publishing the live atlases a running dev build reloads),
//! and looks at a sprite or an atlas page as an image.
//!
//! Invariants: every tool reads the crate afresh (the manifest may have been edited since),
//! reports a user's mistake (an unknown sprite, a manifest that does not parse) as a tool
//! error with the message a build would print, and writes only inside the crate's cache.

use std::io::Cursor;
use std::path::PathBuf;

use base64::Engine;
use pixelgen_build::pipeline::{Freshness, Quiet, SpriteStatus};
use pixelgen_build::{Environment, Error, Project, Session};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

/// The server: one game crate.
#[derive(Clone)]
pub struct PixelgenMcp {
    crate_dir: PathBuf,
    environment: Environment,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SpriteName {
    /// The sprite's name in sprites.ron.
    pub name: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SetSprite {
    /// The sprite's name in sprites.ron; a new sprite is added when there is none.
    pub name: String,
    /// What to draw.
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    /// Animation frames.
    pub frames: Option<u32>,
    /// `[width, height]` in pixels.
    pub size: Option<[u32; 2]>,
    /// The atlas it goes to (declared in sprites.ron).
    pub atlas: Option<String>,
    /// A built-in palette name or a .hex/.gpl file beside sprites.ron.
    pub palette: Option<String>,
    /// Remove the sprite instead (every other argument is ignored).
    pub remove: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Variations {
    /// The sprite's name in sprites.ron.
    pub name: String,
    /// How many seeds to draw (1 to 16); 4 when left out.
    pub count: Option<u32>,
    /// The first seed; the sprite's seed + 1 when left out. Seeds are consecutive.
    pub first_seed: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Pick {
    /// The sprite's name in sprites.ron.
    pub name: String,
    /// The seed to keep (one that `variations` showed).
    pub seed: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Preview {
    /// The sprite's name in sprites.ron.
    pub name: String,
    /// Which frame (0-based); 0 when left out.
    pub frame: Option<u32>,
    /// Nearest-neighbour scale factor (1 to 32); by default the sprite is scaled to about
    /// 256 pixels on its longer side.
    pub scale: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AtlasPage {
    /// The atlas's name in sprites.ron (`main` when the manifest declares none).
    pub atlas: String,
    /// Which page (0-based); 0 when left out.
    pub page: Option<usize>,
}

/// A tool error: the message the user (or the assistant) acts on.
fn refusal(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn png_content(image: &image::RgbaImage) -> Result<ContentBlock, String> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the preview: {e}"))?;
    Ok(ContentBlock::image(
        base64::engine::general_purpose::STANDARD.encode(bytes),
        "image/png",
    ))
}

impl PixelgenMcp {
    pub fn new(crate_dir: PathBuf, environment: Environment) -> Self {
        PixelgenMcp {
            crate_dir,
            environment,
            tool_router: Self::tool_router(),
        }
    }

    fn project(&self) -> Result<Project, Error> {
        Project::discover(&self.crate_dir, None, &self.environment, None)
    }

    /// The crate's session as it is on disk now. `offline`: nothing is downloaded.
    fn session(&self, offline: bool) -> Result<Session, Error> {
        crate::open_project(self.project()?, &self.environment, offline)
    }
}

fn status_json(status: &SpriteStatus) -> serde_json::Value {
    serde_json::json!({
        "name": status.name.as_str(),
        "status": match status.status { Freshness::Fresh => "fresh", Freshness::Stale => "stale" },
        "reasons": status.reasons,
        "frames": status.frames,
    })
}

#[tool_router]
impl PixelgenMcp {
    #[tool(
        description = "List every sprite of the game crate: name, atlas, frames, generator, and whether its cached frames are fresh or stale (with the reasons)."
    )]
    fn list_sprites(&self) -> CallToolResult {
        let mut session = match self.session(true) {
            Ok(session) => session,
            Err(e) => return refusal(e.to_string()),
        };
        let statuses = session.status();
        let sprites: Vec<serde_json::Value> = statuses
            .iter()
            .zip(&session.manifest.sprites)
            .map(|(status, sprite)| {
                let mut entry = status_json(status);
                entry["atlas"] = sprite.atlas.as_str().into();
                entry["generator"] = match &sprite.generator {
                    pixelgen_build::manifest::GeneratorSpec::Procedural => "procedural".into(),
                    pixelgen_build::manifest::GeneratorSpec::Diffusion { model, .. } => {
                        format!("diffusion: {model}").into()
                    }
                };
                entry
            })
            .collect();
        CallToolResult::success(vec![ContentBlock::text(
            serde_json::to_string_pretty(&sprites).unwrap_or_default(),
        )])
    }

    #[tool(
        description = "One sprite's fields as they apply (its own, else the manifest's defaults): prompt, negative prompt, seed, size, frames, atlas, generator, LoRAs, palette, colours, background, outline; and its status."
    )]
    fn get_sprite(
        &self,
        Parameters(SpriteName { name }): Parameters<SpriteName>,
    ) -> CallToolResult {
        let mut session = match self.session(true) {
            Ok(session) => session,
            Err(e) => return refusal(e.to_string()),
        };
        let statuses = session.status();
        let Some(index) = session
            .manifest
            .sprites
            .iter()
            .position(|s| s.name == name.as_str())
        else {
            let known: Vec<&str> = session
                .manifest
                .sprites
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return refusal(format!(
                "no sprite `{name}` in sprites.ron; its sprites are: {}",
                known.join(", ")
            ));
        };
        let sprite = &session.manifest.sprites[index];
        let status = statuses.iter().find(|s| s.name == name.as_str());
        let generator = match &sprite.generator {
            pixelgen_build::manifest::GeneratorSpec::Procedural => serde_json::json!("Procedural"),
            pixelgen_build::manifest::GeneratorSpec::Diffusion {
                model,
                steps,
                guidance,
                scheduler,
                resolution,
            } => serde_json::json!({
                "model": model, "steps": steps, "guidance": guidance,
                "scheduler": scheduler.name(), "resolution": resolution,
            }),
        };
        let fields = serde_json::json!({
            "name": sprite.name.as_str(),
            "prompt": sprite.prompt,
            "negative_prompt": sprite.negative_prompt,
            "seed": sprite.seed,
            "size": [sprite.width, sprite.height],
            "frames": sprite.frames,
            "atlas": sprite.atlas.as_str(),
            "generator": generator,
            "loras": sprite.loras.iter().map(|l| serde_json::json!({"path": l.path, "weight": l.weight})).collect::<Vec<_>>(),
            "palette": sprite.palette.as_ref().map(|p| p.name().to_owned()),
            "max_colors": sprite.max_colors,
            "outline": sprite.outline.map(|c| format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])),
            "status": status.map(status_json),
        });
        CallToolResult::success(vec![ContentBlock::text(
            serde_json::to_string_pretty(&fields).unwrap_or_default(),
        )])
    }

    #[tool(
        description = "Create, change or remove a sprite in sprites.ron. Only the fields given change; other entries, comments and formatting stay as written. The result is validated first: a value the build would refuse is a tool error and the file is left as it was. Call `generate` afterwards."
    )]
    fn set_sprite(&self, Parameters(set): Parameters<SetSprite>) -> CallToolResult {
        use pixelgen_build::manifest::edit::{SpriteChange, edit_sprite};
        let project = match self.project() {
            Ok(project) => project,
            Err(e) => return refusal(e.to_string()),
        };
        let path = project.manifest_path;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return refusal(format!("cannot read {}: {e}", path.display())),
        };
        let change = if set.remove == Some(true) {
            SpriteChange::Remove
        } else {
            // RON's string escapes are Rust's.
            let mut fields: Vec<(String, String)> = Vec::new();
            let mut string = |field: &str, value: &Option<String>| {
                if let Some(v) = value {
                    fields.push((field.into(), format!("{v:?}")));
                }
            };
            string("prompt", &set.prompt);
            string("negative_prompt", &set.negative_prompt);
            string("atlas", &set.atlas);
            string("palette", &set.palette);
            if let Some(seed) = set.seed {
                fields.push(("seed".into(), seed.to_string()));
            }
            if let Some(frames) = set.frames {
                fields.push(("frames".into(), frames.to_string()));
            }
            if let Some([w, h]) = set.size {
                fields.push(("size".into(), format!("({w}, {h})")));
            }
            if fields.is_empty() {
                return refusal("nothing to set: give at least one field (or `remove: true`)");
            }
            SpriteChange::Set(fields)
        };
        let edited = match edit_sprite(&text, &set.name, &change) {
            Ok(edited) => edited,
            Err(e) => return refusal(e),
        };
        if let Err(e) = pixelgen_build::manifest::parse(&path, &edited) {
            return refusal(format!("{e}\nsprites.ron was left as it was"));
        }
        if let Err(e) = pixelgen_build::cache::write_atomically(&path, edited.as_bytes()) {
            return refusal(format!("cannot write {}: {e}", path.display()));
        }
        let what = if change == SpriteChange::Remove {
            "removed"
        } else {
            "written"
        };
        CallToolResult::success(vec![ContentBlock::text(format!(
            "sprite `{}` {what}; call `generate` to draw it",
            set.name
        ))])
    }

    #[tool(
        description = "Draw a sprite's first frame with several consecutive seeds, as one contact-sheet image (left to right, in seed order), without changing sprites.ron or the cache. Keep one with `pick`."
    )]
    fn variations(&self, Parameters(v): Parameters<Variations>) -> CallToolResult {
        let session = match self.session(true) {
            Ok(session) => session,
            Err(e) => return refusal(e.to_string()),
        };
        let Some((sprite, planned)) = session
            .sprites_with_keys()
            .find(|(s, _)| s.name == v.name.as_str())
        else {
            return refusal(format!("no sprite `{}` in sprites.ron", v.name));
        };
        let count = v.count.unwrap_or(4).clamp(1, 16);
        let first = v.first_seed.unwrap_or(sprite.seed.wrapping_add(1));
        let seeds: Vec<u64> = (0..u64::from(count))
            .map(|i| first.wrapping_add(i))
            .collect();
        let specs: Vec<pixelgen_build::manifest::SpriteSpec> = seeds
            .iter()
            .map(|&seed| pixelgen_build::manifest::SpriteSpec {
                seed,
                ..sprite.clone()
            })
            .collect();
        let jobs: Vec<pixelgen_build::generate::Job> = specs
            .iter()
            .map(|spec| pixelgen_build::generate::Job {
                sprite: spec,
                frame: 0,
            })
            .collect();
        let mut timings = pixelgen_build::timings::Timings::new();
        let drawn = (|| {
            #[cfg(unix)]
            let mut backend = pixelgen_build::generate::remote::backend_for(
                sprite,
                session.project.manifest_dir(),
                &self.environment,
                pixelgen_build::serve::server_for(&self.environment).as_ref(),
                &planned.files,
                &mut timings,
            )?;
            #[cfg(not(unix))]
            let mut backend = pixelgen_build::generate::backend_for(
                sprite,
                session.project.manifest_dir(),
                &self.environment,
                &mut timings,
            )?;
            backend.generate(&jobs, &mut timings)
        })();
        let raws = match drawn {
            Ok(raws) => raws,
            Err(e) => return refusal(e.to_string()),
        };
        let tiles: Vec<image::RgbaImage> = raws
            .into_iter()
            .zip(&specs)
            .map(|(raw, spec)| pixelgen_build::pixelize::finish(raw, spec))
            .collect();
        let (w, h) = (sprite.width, sprite.height);
        let scale = (128 / w.max(h).max(1)).clamp(1, 16);
        let gap = 4;
        let sheet_width = count * (w * scale + gap) - gap;
        let mut sheet = image::RgbaImage::new(sheet_width, h * scale);
        for (i, tile) in tiles.iter().enumerate() {
            let scaled = image::imageops::resize(
                tile,
                w * scale,
                h * scale,
                image::imageops::FilterType::Nearest,
            );
            image::imageops::overlay(
                &mut sheet,
                &scaled,
                i64::from(i as u32 * (w * scale + gap)),
                0,
            );
        }
        let listed: Vec<String> = seeds.iter().map(u64::to_string).collect();
        match png_content(&sheet) {
            Ok(content) => CallToolResult::success(vec![
                ContentBlock::text(format!(
                    "{} with seeds {} (left to right), shown ×{scale}; keep one with `pick`",
                    v.name,
                    listed.join(", ")
                )),
                content,
            ]),
            Err(message) => refusal(message),
        }
    }

    #[tool(
        description = "Keep a seed that `variations` showed: writes it as the sprite's `seed` in sprites.ron (nothing else changes). Call `generate` afterwards."
    )]
    fn pick(&self, Parameters(Pick { name, seed }): Parameters<Pick>) -> CallToolResult {
        match self.session(true) {
            Ok(session)
                if !session
                    .manifest
                    .sprites
                    .iter()
                    .any(|s| s.name == name.as_str()) =>
            {
                return refusal(format!("no sprite `{name}` in sprites.ron"));
            }
            Ok(_) => {}
            Err(e) => return refusal(e.to_string()),
        }
        self.set_sprite(Parameters(SetSprite {
            name,
            prompt: None,
            negative_prompt: None,
            seed: Some(seed),
            frames: None,
            size: None,
            atlas: None,
            palette: None,
            remove: None,
        }))
    }

    #[tool(
        description = "Generate every stale sprite into the cache, update sprites.lock, and publish the atlases a running dev build of the game reloads. Returns the summary line."
    )]
    fn generate(&self) -> CallToolResult {
        let result = (|| -> Result<String, Error> {
            let session = self.session(false)?;
            #[cfg(unix)]
            let session = session.with_server(pixelgen_build::serve::server_for(&self.environment));
            let mut session = session;
            let summary = session.realize(false, &mut Quiet)?;
            pixelgen_build::emit::emit(&session, &session.project.live_dir())?;
            let mut text = summary.to_string();
            for note in &summary.notes {
                text.push('\n');
                text.push_str(note);
            }
            Ok(text)
        })();
        match result {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(e) => refusal(e.to_string()),
        }
    }

    #[tool(
        description = "A sprite frame as a PNG image, scaled up by nearest neighbour so its pixels stay crisp. The sprite must be fresh (generate it first)."
    )]
    fn preview_sprite(&self, Parameters(preview): Parameters<Preview>) -> CallToolResult {
        let mut session = match self.session(true) {
            Ok(session) => session,
            Err(e) => return refusal(e.to_string()),
        };
        let statuses = session.status();
        let Some(planned) = session
            .sprites_with_keys()
            .find(|(s, _)| s.name == preview.name.as_str())
            .map(|(_, p)| p.clone())
        else {
            return refusal(format!("no sprite `{}` in sprites.ron", preview.name));
        };
        if statuses
            .iter()
            .any(|s| s.name == preview.name.as_str() && s.status == Freshness::Stale)
        {
            return refusal(format!(
                "sprite `{}` is stale: call `generate` first",
                preview.name
            ));
        }
        let frame = preview.frame.unwrap_or(0);
        let Some(planned_frame) = planned.frames.get(frame as usize) else {
            return refusal(format!(
                "sprite `{}` has {} frame(s); frames are numbered from 0",
                preview.name,
                planned.frames.len()
            ));
        };
        let image = match session.cache().read(&planned_frame.key) {
            Ok(image) => image,
            Err(e) => return refusal(format!("cannot read the cached frame: {e}")),
        };
        let longer = image.width().max(image.height()).max(1);
        let scale = preview.scale.unwrap_or((256 / longer).max(1)).clamp(1, 32);
        let scaled = image::imageops::resize(
            &image,
            image.width() * scale,
            image.height() * scale,
            image::imageops::FilterType::Nearest,
        );
        match png_content(&scaled) {
            Ok(content) => CallToolResult::success(vec![
                ContentBlock::text(format!(
                    "{} frame {frame}: {}×{} px, shown ×{scale}",
                    preview.name,
                    image.width(),
                    image.height()
                )),
                content,
            ]),
            Err(message) => refusal(message),
        }
    }

    #[tool(
        description = "An atlas page as the game shows it (the published live atlas), as a PNG image."
    )]
    fn preview_atlas(
        &self,
        Parameters(AtlasPage { atlas, page }): Parameters<AtlasPage>,
    ) -> CallToolResult {
        let project = match self.project() {
            Ok(project) => project,
            Err(e) => return refusal(e.to_string()),
        };
        let index_path = pixelgen_build::index::Index::path_in(&project.live_dir());
        let index = match pixelgen_build::index::Index::read(&index_path) {
            Ok(index) => index,
            Err(e) => {
                return refusal(format!(
                    "{e}\nhelp: call `generate` (or build the game) first"
                ));
            }
        };
        let Some(found) = index.atlases.iter().find(|a| a.name == atlas) else {
            let known: Vec<&str> = index.atlases.iter().map(|a| a.name.as_str()).collect();
            return refusal(format!(
                "no atlas `{atlas}`; the atlases are: {}",
                known.join(", ")
            ));
        };
        let page = page.unwrap_or(0);
        let Some(indexed) = found.pages.get(page) else {
            return refusal(format!("atlas `{atlas}` has {} page(s)", found.pages.len()));
        };
        let image = match image::open(&indexed.image) {
            Ok(image) => image.to_rgba8(),
            Err(e) => return refusal(format!("cannot read {}: {e}", indexed.image.display())),
        };
        match png_content(&image) {
            Ok(content) => CallToolResult::success(vec![
                ContentBlock::text(format!(
                    "atlas `{atlas}` page {page}: {}×{} px, {} layout index(es)",
                    indexed.width,
                    indexed.height,
                    indexed.rects.len()
                )),
                content,
            ]),
            Err(message) => refusal(message),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PixelgenMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "pixelgen: the game crate's pixel-art sprites. list_sprites and get_sprite read sprites.ron, set_sprite edits it; generate makes what is stale and publishes the atlases a running dev build reloads; preview_sprite and preview_atlas show them.",
        )
    }
}

/// Serves until the client closes stdin.
pub fn run(crate_dir: PathBuf, environment: &Environment) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Environment(format!("cannot start the MCP server: {e}")))?;
    runtime.block_on(async {
        let server = PixelgenMcp::new(crate_dir, environment.clone())
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| Error::Environment(format!("MCP: {e}")))?;
        server
            .waiting()
            .await
            .map_err(|e| Error::Environment(format!("MCP: {e}")))?;
        Ok(())
    })
}
