//! `cargo pixelgen mcp`: an MCP server over stdio (rmcp, the official Rust SDK) through
//! which an AI assistant drives a game crate's sprites: lists them with their status, reads
//! and edits one, generates what is stale (with progress notifications, publishing the live
//! atlases a running dev build reloads, and asking the game to reload them over the Bevy
//! Remote Protocol), looks at a sprite, an atlas page or the running game as an image, and
//! offers the manifest and the atlas pages as resources.
//!
//! Invariants: every tool reads the crate afresh (the manifest may have been edited since),
//! reports a user's mistake (an unknown sprite, a manifest that does not parse) as a tool
//! error with the message a build would print, writes only `sprites.ron`, `sprites.lock`
//! and the crate's cache, and talks to no host but 127.0.0.1 (the game's BRP port).

use std::io::Cursor;
use std::path::PathBuf;

use base64::Engine;
use pixelgen_build::{Environment, Error, Project, Session};
use pixelgen_build::{Freshness, SpriteStatus};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, ListResourcesResult, PaginatedRequestParams,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    RequestMetaObject, Resource, ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router,
};

use crate::game::{CallError, Game};

mod params;
mod resources;

use params::*;

/// The server: one game crate, and the port its running dev build answers BRP on.
#[derive(Clone)]
pub struct PixelgenMcp {
    crate_dir: PathBuf,
    environment: Environment,
    game: Game,
    tool_router: ToolRouter<Self>,
}

/// The manifest resource's URI; atlas pages are `pixelgen://atlas/{atlas}/{page}.png`.
const MANIFEST_URI: &str = "pixelgen://manifest/sprites.ron";
const ATLAS_URI_PREFIX: &str = "pixelgen://atlas/";

/// A tool error: the message the user (or the assistant) acts on.
fn refusal(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// `image` scaled up `scale` times by nearest neighbour (pixels stay crisp).
fn scaled_up(image: &image::RgbaImage, scale: u32) -> image::RgbaImage {
    image::imageops::resize(
        image,
        image.width() * scale,
        image.height() * scale,
        image::imageops::FilterType::Nearest,
    )
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
    pub fn new(crate_dir: PathBuf, environment: Environment, game: Game) -> Self {
        PixelgenMcp {
            crate_dir,
            environment,
            game,
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

/// "no sprite `a`, `b` in sprites.ron; its sprites are: …"
fn no_such_sprites(session: &Session, unknown: &[&str]) -> String {
    let unknown: Vec<String> = unknown.iter().map(|n| format!("`{n}`")).collect();
    let known: Vec<&str> = session.plan.specs().map(|s| s.name.as_str()).collect();
    format!(
        "no sprite {} in sprites.ron; its sprites are: {}",
        unknown.join(", "),
        known.join(", ")
    )
}

/// The atlases the crate last published (what a running dev build shows).
fn live_index(project: &Project) -> Result<pixelgen_build::index::Index, String> {
    let path = pixelgen_build::index::Index::path_in(&project.live_dir());
    pixelgen_build::index::Index::read(&path)
        .map_err(|e| format!("{e}\nhelp: call `generate` (or build the game) first"))
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
            .zip(session.plan.specs())
            .map(|(status, sprite)| {
                let mut entry = status_json(status);
                entry["atlas"] = sprite.atlas.as_str().into();
                entry["generator"] = sprite.generator.backend().summary().into();
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
        let Some(sprite) = session.plan.sprite(name.as_str()).map(|p| &p.spec) else {
            return refusal(no_such_sprites(&session, &[name.as_str()]));
        };
        let status = statuses.iter().find(|s| s.name == name.as_str());
        let generator = sprite.generator.backend().describe();
        let fields = serde_json::json!({
            "name": sprite.name.as_str(),
            "prompt": sprite.prompt,
            "negative_prompt": sprite.negative_prompt,
            "seed": sprite.seed,
            "size": [sprite.width, sprite.height],
            "frames": sprite.frames,
            "atlas": sprite.atlas.as_str(),
            "generator": generator,
            "loras": sprite.loras.iter().map(|l| match &l.source {
                pixelgen_build::manifest::LoraSource::File { path, .. } => serde_json::json!({"path": path, "weight": l.weight}),
                pixelgen_build::manifest::LoraSource::Trained(name) => serde_json::json!({"trained": name.as_str(), "weight": l.weight}),
            }).collect::<Vec<_>>(),
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
        let Some(planned) = session.plan.sprite(v.name.as_str()) else {
            return refusal(format!("no sprite `{}` in sprites.ron", v.name));
        };
        if let Some(untrained) = planned
            .loras
            .iter()
            .find(|l| l.trained.is_some() && !l.file.is_file())
            .and_then(|l| l.trained.as_ref())
        {
            return refusal(format!(
                "sprite `{}` uses trained LoRA `{untrained}`, which is not trained yet: call `generate` for this sprite (it trains the LoRA first), then preview",
                v.name
            ));
        }
        let sprite = &planned.spec;
        let name = sprite.name.clone();
        let count = v.count.unwrap_or(4).clamp(1, 16);
        let first = v.first_seed.unwrap_or(sprite.seed.wrapping_add(1));
        let seeds: Vec<u64> = (0..u64::from(count))
            .map(|i| first.wrapping_add(i))
            .collect();
        let (w, h) = (sprite.width, sprite.height);
        #[cfg(unix)]
        let session = session.with_server(pixelgen_build::generate::diffusion::warm::server_for(
            &self.environment,
        ));
        let mut session = session;
        let tiles = match session.draw_seeds(&name, &seeds) {
            Ok(tiles) => tiles,
            Err(e) => return refusal(e.to_string()),
        };
        let scale = (128 / w.max(h).max(1)).clamp(1, 16);
        let gap = 4;
        let sheet_width = count * (w * scale + gap) - gap;
        let mut sheet = image::RgbaImage::new(sheet_width, h * scale);
        for (i, tile) in tiles.iter().enumerate() {
            let scaled = scaled_up(tile, scale);
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
            Ok(session) if session.plan.sprite(name.as_str()).is_none() => {
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
        description = "Generate the stale sprites (all, or the ones named) into the cache, update sprites.lock, publish the atlases a running dev build reloads, and ask the running game (if any) to reload them. Sends progress notifications per frame when the call carries a progress token. Returns the summary and what the game said."
    )]
    async fn generate(
        &self,
        Parameters(Generate { sprites }): Parameters<Generate>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> CallToolResult {
        let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
        let server = self.clone();
        // The pipeline blocks: it runs on its own thread while this task relays progress.
        let work = std::thread::spawn(move || server.generate_blocking(sprites, sender));
        let token = meta.get_progress_token();
        let mut done = 0u32;
        while let Some(event) = events.recv().await {
            let Some(token) = token.clone() else { continue };
            let notification = match event {
                Event::Start(total) => {
                    ProgressNotificationParam::new(token, 0.0).with_total(f64::from(total))
                }
                Event::Frame(frame, total) => {
                    done += 1;
                    ProgressNotificationParam::new(token, f64::from(done))
                        .with_total(f64::from(total))
                        .with_message(format!("{frame} done"))
                }
            };
            let _ = peer.notify_progress(notification).await;
        }
        let generated = match work.join() {
            Ok(result) => result,
            Err(_) => Err("generation stopped on an internal error (a panic); nothing half-written is kept in the cache".to_owned()),
        };
        let mut text = match generated {
            Ok(text) => text,
            Err(message) => return refusal(message),
        };
        if text.contains("live atlases published") {
            text.push('\n');
            text.push_str(&self.reload_game().await);
        }
        CallToolResult::success(vec![ContentBlock::text(text)])
    }

    #[tool(
        description = "A screenshot of the running game (a dev build with Bevy's remote plugin and pixelgen's `remote` feature, such as the example game), as a PNG image."
    )]
    async fn screenshot(
        &self,
        Parameters(GameScreenshot { scale }): Parameters<GameScreenshot>,
    ) -> CallToolResult {
        let game = self.game;
        // A fresh ticket: this request gets a picture taken after it arrived.
        let ticket = format!(
            "mcp-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        );
        let answer = tokio::task::spawn_blocking(move || {
            game.call(
                "pixelgen.screenshot",
                serde_json::json!({ "ticket": ticket }),
                std::time::Duration::from_secs(30),
            )
        })
        .await;
        let result = match answer {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => return refusal(error.to_string()),
            Err(e) => return refusal(format!("the screenshot call failed: {e}")),
        };
        let image = result
            .get("png")
            .and_then(serde_json::Value::as_str)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|png| image::load_from_memory(&png).ok())
            .map(|image| image.to_rgba8());
        let Some(image) = image else {
            return refusal(format!(
                "the game's screenshot answer holds no PNG: {}",
                serde_json::Value::Object(
                    result
                        .as_object()
                        .map(|o| o
                            .iter()
                            .filter(|(k, _)| *k != "png")
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect())
                        .unwrap_or_default()
                )
            ));
        };
        let scale = scale.unwrap_or(1).clamp(1, 8);
        let shown = if scale == 1 {
            image
        } else {
            scaled_up(&image, scale)
        };
        match png_content(&shown) {
            Ok(content) => CallToolResult::success(vec![
                ContentBlock::text(format!(
                    "the running game (127.0.0.1:{}): {}×{} px, shown ×{scale}",
                    self.game.port,
                    shown.width() / scale,
                    shown.height() / scale
                )),
                content,
            ]),
            Err(message) => refusal(message),
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
        let Some(planned) = session.plan.sprite(preview.name.as_str()).cloned() else {
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
        let scaled = scaled_up(&image, scale);
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
        let index = match live_index(&project) {
            Ok(index) => index,
            Err(message) => return refusal(message),
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

/// What the generating thread tells the tool while it works.
enum Event {
    Start(u32),
    Frame(pixelgen_build::FrameId, u32),
}

/// Relays the pipeline's progress to the tool's task.
struct Relay {
    sender: tokio::sync::mpsc::UnboundedSender<Event>,
    total: u32,
}

impl pixelgen_build::Progress for Relay {
    fn start(&mut self, frames_to_generate: usize) {
        self.total = u32::try_from(frames_to_generate).unwrap_or(u32::MAX);
        let _ = self.sender.send(Event::Start(self.total));
    }
    fn frame_done(&mut self, frame: &pixelgen_build::FrameId) {
        let _ = self.sender.send(Event::Frame(frame.clone(), self.total));
    }
}

impl PixelgenMcp {
    /// Generates (all stale, or `only` these) and publishes the live atlases when nothing
    /// is left stale. Returns the text for the assistant, or the error.
    fn generate_blocking(
        &self,
        only: Option<Vec<String>>,
        sender: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Result<String, String> {
        let mut session = self
            .project()
            .and_then(|project| crate::open_to_generate(project, &self.environment))
            .map_err(|e| e.to_string())?;
        if let Some(names) = &only {
            let unknown: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| session.plan.sprite(n).is_none())
                .collect();
            if !unknown.is_empty() {
                return Err(no_such_sprites(&session, &unknown));
            }
        }
        let only: Option<std::collections::BTreeSet<pixelgen_build::SpriteName>> =
            only.map(|names| names.into_iter().map(Into::into).collect());
        let mut relay = Relay { sender, total: 0 };
        let summary = session
            .realize_only(false, only.as_ref(), &mut relay)
            .map_err(|e| e.to_string())?;
        let mut text = summary.to_string();
        for note in &summary.notes {
            text.push('\n');
            text.push_str(note);
        }
        if summary.held_back > 0 {
            text.push_str(&format!(
                "\n{} other sprite(s) are still stale; the live atlases were not published (generate them to see the atlases live)",
                summary.held_back
            ));
        } else {
            let live = session.project.live_dir();
            pixelgen_build::emit::emit(&session, &live).map_err(|e| e.to_string())?;
            text.push_str(&format!("\nlive atlases published in {}", live.display()));
        }
        Ok(text)
    }

    /// Asks the running game to reload the published atlases; says what it answered.
    async fn reload_game(&self) -> String {
        let game = self.game;
        let answer = tokio::task::spawn_blocking(move || {
            game.call(
                "pixelgen.reload",
                serde_json::Value::Null,
                std::time::Duration::from_secs(10),
            )
        })
        .await;
        match answer {
            Ok(Ok(result)) => {
                let sets = result.get("sets").and_then(serde_json::Value::as_array);
                let lines: Vec<String> = sets
                    .into_iter()
                    .flatten()
                    .map(|set| {
                        let status = set
                            .get("status")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or("?");
                        match set.get("reason").and_then(serde_json::Value::as_str) {
                            Some(reason) => format!("the game: {status} ({reason})"),
                            None => format!("the game: {status}"),
                        }
                    })
                    .collect();
                if lines.is_empty() {
                    "the game answered, but shows no pixelgen sprite set".to_owned()
                } else {
                    lines.join("\n")
                }
            }
            Ok(Err(CallError::NotRunning(_))) => format!(
                "no running game answers on 127.0.0.1:{} (a dev build reloads the published atlases by itself when it runs)",
                self.game.port
            ),
            Ok(Err(error)) => error.to_string(),
            Err(e) => format!("asking the game to reload failed: {e}"),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PixelgenMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_instructions(
            "pixelgen: the game crate's pixel-art sprites. list_sprites and get_sprite read sprites.ron, set_sprite edits it (variations and pick choose a seed); generate makes what is stale, publishes the atlases and has a running dev build reload them; preview_sprite and preview_atlas show them, screenshot shows the running game. Resources: sprites.ron and the published atlas pages.",
        )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.resources()
            .map(ListResourcesResult::with_all_items)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let contents = self.read(&request.uri)?;
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

/// Serves until the client closes stdin.
pub fn run(crate_dir: PathBuf, environment: &Environment, game: Game) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Environment(format!("cannot start the MCP server: {e}")))?;
    runtime.block_on(async {
        let server = PixelgenMcp::new(crate_dir, environment.clone(), game)
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
