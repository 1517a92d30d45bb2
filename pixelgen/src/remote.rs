//! pixelgen's methods on the Bevy Remote Protocol (feature `remote`), which tools such as
//! `cargo pixelgen mcp` call in a running game:
//!
//! - [`RELOAD_METHOD`] (`pixelgen.reload`): reads the published atlases of every sprite set
//!   now and answers what came of it, per set: `reloaded` (with the published `stamp`),
//!   `unchanged`, `rebuild_needed` (the sprites or their frames changed: the compiled
//!   indices no longer fit), `unreadable` or `missing`, with the `reason`. Sets without
//!   hot reload (release builds) answer `off`.
//! - [`SCREENSHOT_METHOD`] (`pixelgen.screenshot`): captures what the game's frontmost
//!   active camera renders (its window, or its image target when the game renders
//!   offscreen) and answers `{"png": base64, "width", "height"}` once the frame is read
//!   back, a frame or two later.
//!
//! They are added by [`SpritesPlugin`](crate::SpritesPlugin) when the app has Bevy's
//! `RemotePlugin`, whatever the order the plugins were added in (they register in
//! `finish`). The game decides whether and where BRP listens (`RemoteHttpPlugin`): pixelgen
//! opens nothing by itself.
//!
//! Invariants: a screenshot request is answered with a picture captured after it arrived,
//! never an older one, or with an error after 600 frames without one (never left waiting);
//! requests carrying the same `ticket` (any JSON value; the default is `null`) while one is
//! in flight share that capture.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bevy::app::App;
use bevy::asset::Handle;
use bevy::camera::{Camera, RenderTarget};
use bevy::ecs::prelude::*;
use bevy::ecs::system::SystemId;
use bevy::image::Image;
use bevy::remote::{BrpError, BrpResult, RemoteMethodSystemId, RemoteMethods, error_codes};
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use bevy::window::{PrimaryWindow, WindowRef};
use serde_json::{Value, json};

use crate::SpriteSet;
use crate::live::{self, LiveAtlases, Outcome};

/// Reads the published atlases now; see the module documentation.
pub const RELOAD_METHOD: &str = "pixelgen.reload";
/// Captures the game's picture as a PNG; see the module documentation.
pub const SCREENSHOT_METHOD: &str = "pixelgen.screenshot";

/// The reload system of every sprite set in the app, each answering one JSON report.
#[derive(Resource, Default)]
struct Reloaders(Vec<SystemId<(), Value>>);

/// Registers `S` for [`RELOAD_METHOD`], and both methods once per app. Does nothing when
/// the app has no `RemotePlugin`.
pub(crate) fn register<S: SpriteSet>(app: &mut App) {
    let world = app.world_mut();
    if !world.contains_resource::<RemoteMethods>() {
        return;
    }
    let reloader = world.register_system(reload_set::<S>);
    world.get_resource_or_init::<Reloaders>().0.push(reloader);
    if world
        .resource::<RemoteMethods>()
        .get(RELOAD_METHOD)
        .is_none()
    {
        let reload = world.register_system(reload_method);
        let screenshot = world.register_system(screenshot_method);
        let mut methods = world.resource_mut::<RemoteMethods>();
        methods.insert(RELOAD_METHOD, RemoteMethodSystemId::Instant(reload));
        methods.insert(
            SCREENSHOT_METHOD,
            RemoteMethodSystemId::Watching(screenshot),
        );
    }
}

fn reload_set<S: SpriteSet>(
    live: Option<ResMut<LiveAtlases<S>>>,
    atlases: Option<ResMut<crate::Atlases<S>>>,
    images: ResMut<bevy::asset::Assets<Image>>,
    layouts: ResMut<bevy::asset::Assets<bevy::image::TextureAtlasLayout>>,
) -> Value {
    let atlases_of_set: Vec<&str> = S::ATLASES.iter().map(|a| a.name).collect();
    let (index, outcome) = live::reload_now::<S>(live, atlases, images, layouts);
    // The status, and the one detail that goes with it (`stamp` or `reason`).
    let (status, detail) = match outcome {
        None => (
            "off",
            Some((
                "reason",
                "hot reload is off for this set (a release build)".to_owned(),
            )),
        ),
        Some(Outcome::Reloaded(stamp)) => ("reloaded", Some(("stamp", stamp))),
        Some(Outcome::Unchanged) => ("unchanged", None),
        Some(Outcome::Mismatch(why)) => (
            "rebuild_needed",
            Some((
                "reason",
                format!("{why}; run `cargo build` and restart the game"),
            )),
        ),
        Some(Outcome::Unreadable(why)) => ("unreadable", Some(("reason", why))),
        Some(Outcome::Missing) => (
            "missing",
            Some((
                "reason",
                "nothing is published yet: run `cargo build` or `cargo pixelgen watch`".to_owned(),
            )),
        ),
    };
    let mut report = json!({
        "atlases": atlases_of_set,
        "index": index.map(|p| p.display().to_string()),
        "status": status,
    });
    if let Some((key, value)) = detail {
        report[key] = json!(value);
    }
    report
}

fn reload_method(In(_params): In<Option<Value>>, world: &mut World) -> BrpResult {
    let reloaders = world
        .get_resource::<Reloaders>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let mut sets = Vec::new();
    for reloader in reloaders {
        sets.push(world.run_system(reloader).map_err(|e| BrpError {
            code: error_codes::INTERNAL_ERROR,
            message: format!("pixelgen: reloading failed: {e}"),
            data: None,
        })?);
    }
    Ok(json!({ "sets": sets }))
}

/// A capture on its way back from the render world.
type Slot = Arc<Mutex<Option<Result<Value, String>>>>;

enum Capture {
    /// Requested; the frames waited so far.
    Pending(Slot, u16),
    /// Answered; kept a few frames for the calls that the remote plugin makes to a
    /// watching method before it drops the finished request.
    Answered {
        answer: Result<Value, String>,
        frames_left: u8,
    },
}

/// Screenshot requests in flight, by ticket.
#[derive(Default)]
struct Captures(HashMap<String, Capture>);

/// Frames an answered capture is kept (the remote plugin drops a finished request within
/// one or two).
const KEEP_ANSWERED_FRAMES: u8 = 4;

/// Frames a capture may take before the request is answered with an error rather than left
/// waiting (a render target that never renders, say).
const CAPTURE_WITHIN_FRAMES: u16 = 600;

/// A watching method: called every frame for every open request until it answers.
fn screenshot_method(
    In(params): In<Option<Value>>,
    mut captures: Local<Captures>,
    mut last_frame: Local<Option<u32>>,
    frame: Option<Res<bevy::diagnostic::FrameCount>>,
    cameras: Query<(&Camera, &RenderTarget)>,
    primary: Query<Entity, With<PrimaryWindow>>,
    mut commands: Commands,
) -> BrpResult<Option<Value>> {
    // Age answered captures once per frame, however many requests call in it.
    let this_frame = frame.map(|f| f.0);
    if this_frame != *last_frame || this_frame.is_none() {
        *last_frame = this_frame;
        captures.0.retain(|_, capture| match capture {
            Capture::Pending(_, waited) => {
                *waited = waited.saturating_add(1);
                true
            }
            Capture::Answered { frames_left, .. } => {
                *frames_left = frames_left.saturating_sub(1);
                *frames_left > 0
            }
        });
    }
    let ticket = params
        .as_ref()
        .and_then(|p| p.get("ticket"))
        .map(Value::to_string)
        .unwrap_or_else(|| "null".to_owned());
    let answer = match captures.0.get_mut(&ticket) {
        Some(Capture::Answered { answer, .. }) => Some(answer.clone()),
        Some(Capture::Pending(slot, waited)) => {
            let waited = *waited;
            let done = slot
                .lock()
                .map(|mut s| s.take())
                .unwrap_or_else(|_| {
                    Some(Err("the capture failed (a panic while reading it)".into()))
                })
                .or_else(|| {
                    (waited >= CAPTURE_WITHIN_FRAMES).then(|| {
                        Err(format!(
                            "pixelgen: no frame was captured within {CAPTURE_WITHIN_FRAMES} frames; is the camera's target rendered?"
                        ))
                    })
                });
            done.inspect(|answer| {
                captures.0.insert(
                    ticket.clone(),
                    Capture::Answered {
                        answer: answer.clone(),
                        frames_left: KEEP_ANSWERED_FRAMES,
                    },
                );
            })
        }
        None => {
            let screenshot = frontmost_target(&cameras, &primary).map_err(|message| BrpError {
                code: error_codes::INTERNAL_ERROR,
                message,
                data: None,
            })?;
            let slot: Slot = Arc::default();
            let delivery = slot.clone();
            commands
                .spawn(screenshot)
                .observe(move |captured: On<ScreenshotCaptured>| {
                    if let Ok(mut delivery) = delivery.lock() {
                        *delivery = Some(encode(captured.image.clone()));
                    }
                });
            captures.0.insert(ticket, Capture::Pending(slot, 0));
            None
        }
    };
    match answer {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(message)) => Err(BrpError {
            code: error_codes::INTERNAL_ERROR,
            message,
            data: None,
        }),
    }
}

/// What the active camera with the highest order draws to.
fn frontmost_target(
    cameras: &Query<(&Camera, &RenderTarget)>,
    primary: &Query<Entity, With<PrimaryWindow>>,
) -> Result<Screenshot, String> {
    let target = cameras
        .iter()
        .filter(|(camera, _)| camera.is_active)
        .max_by_key(|(camera, _)| camera.order)
        .map(|(_, target)| target)
        .ok_or("pixelgen: no active camera to take a screenshot of")?;
    match target {
        RenderTarget::Window(WindowRef::Primary) => primary
            .iter()
            .next()
            .map(Screenshot::window)
            .ok_or_else(|| {
                "pixelgen: the camera draws to the primary window, which is gone".into()
            }),
        RenderTarget::Window(WindowRef::Entity(window)) => Ok(Screenshot::window(*window)),
        RenderTarget::Image(image) => Ok(Screenshot::image(Handle::clone(&image.handle))),
        RenderTarget::TextureView(view) => Ok(Screenshot::texture_view(*view)),
        RenderTarget::None { .. } => {
            Err("pixelgen: the frontmost camera draws to no colour target".into())
        }
    }
}

fn encode(image: Image) -> Result<Value, String> {
    let image = image
        .try_into_dynamic()
        .map_err(|e| format!("pixelgen: cannot read the captured frame: {e}"))?
        .to_rgba8();
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("pixelgen: cannot encode the captured frame: {e}"))?;
    Ok(json!({
        "png": base64::engine::general_purpose::STANDARD.encode(&png),
        "width": image.width(),
        "height": image.height(),
    }))
}
