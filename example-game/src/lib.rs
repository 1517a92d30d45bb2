//! A small game whose art all comes from `sprites.ron` through pixelgen: a knight walks
//! over a tiled meadow and picks up coins, potions, swords and hearts, while slimes and
//! bats wander about.
//!
//! `cargo run -p example-game` opens a window (arrow keys or WASD to walk).
//! `cargo run -p example-game -- --screenshot out.png` renders a few frames offscreen,
//! with the knight walking on its own, and writes the last one to `out.png`;
//! `-- --headless` renders offscreen until stopped.
//!
//! Dev builds answer the Bevy Remote Protocol on 127.0.0.1:15702 (`--remote-port PORT`
//! to move it, `--no-remote` to turn it off), with pixelgen's methods for tools.
//!
//! The typed indices keep atlases apart: an item where a character is expected does
//! not compile.
//!
//! ```compile_fail,E0308
//! use example_game::sprites::{SpriteIndex, characters, items};
//! fn show_character(_: SpriteIndex<characters::Atlas>) {}
//! show_character(items::POTION);
//! ```
//!
//! ```
//! use example_game::sprites::{SpriteIndex, characters, items};
//! fn show_character(_: SpriteIndex<characters::Atlas>) {}
//! show_character(characters::HERO);
//! show_character(characters::HERO_WALK.frame(2));
//! let _: SpriteIndex<items::Atlas> = items::POTION;
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::camera::RenderTarget;
use bevy::prelude::*;
use bevy::remote::{RemotePlugin, http::RemoteHttpPlugin};
use bevy::render::render_resource::{TextureFormat, TextureUsages};
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use bevy::window::{ExitCondition, WindowResolution};
use bevy::winit::WinitPlugin;

pixelgen::sprites!();

use sprites::{AtlasData, Atlases, SpritesPlugin, characters, items, tiles};

/// The world, in tiles.
const MAP_WIDTH: i32 = 24;
const MAP_HEIGHT: i32 = 18;
const TILE: f32 = 32.0;
/// The window (or screenshot), in screen pixels; the camera zooms 2× for chunky pixels.
const VIEW_WIDTH: u32 = 800;
const VIEW_HEIGHT: u32 = 600;
const ZOOM: f32 = 2.0;
const HERO_SPEED: f32 = 90.0;
/// Frames rendered before the screenshot is taken (the knight walks meanwhile).
const SCREENSHOT_AFTER_FRAMES: u32 = 60;

/// How the game runs, from its command line.
#[derive(Debug, PartialEq)]
struct Options {
    view: View,
    /// The Bevy Remote Protocol port (dev builds), or `None` with `--no-remote`.
    remote_port: Option<u16>,
    /// Reload published atlases from this `index.json` instead of this crate's own.
    live_index: Option<PathBuf>,
}

#[derive(Debug, PartialEq)]
enum View {
    /// A window (needs a display).
    Window,
    /// Offscreen: render some frames, write the last to this file, exit.
    Screenshot(PathBuf),
    /// Offscreen until stopped, for tools that look through BRP (`pixelgen.screenshot`).
    Headless,
}

const USAGE: &str = "usage: example-game [--screenshot OUT.png | --headless] [--remote-port PORT | --no-remote] [--live-index PATH]";

/// The port Bevy's remote protocol listens on by default (`RemoteHttpPlugin`).
pub const DEFAULT_REMOTE_PORT: u16 = 15702;

/// Runs the game with the command-line arguments (without the program name).
pub fn run(args: &[String]) -> ExitCode {
    let options = match parse_args(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("example-game: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut app = App::new();
    let offscreen = || {
        // No window and no winit: render into an image (read back for screenshots).
        DefaultPlugins
            .set(ImagePlugin::default_nearest())
            .set(WindowPlugin {
                primary_window: None,
                exit_condition: ExitCondition::DontExit,
                ..default()
            })
            .disable::<WinitPlugin>()
    };
    match options.view {
        View::Screenshot(path) => {
            app.add_plugins(offscreen())
                .add_plugins(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
                    1.0 / 60.0,
                )))
                .insert_resource(Autopilot)
                .insert_resource(Offscreen::default())
                .insert_resource(ScreenshotJob {
                    path,
                    frames_left: SCREENSHOT_AFTER_FRAMES,
                    outcome: None,
                })
                .add_systems(Update, screenshot_when_ready);
        }
        View::Headless => {
            app.add_plugins(offscreen())
                .add_plugins(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
                    1.0 / 60.0,
                )))
                .insert_resource(Autopilot)
                .insert_resource(Offscreen::default());
        }
        View::Window => {
            if std::env::var_os("DISPLAY").is_none()
                && std::env::var_os("WAYLAND_DISPLAY").is_none()
            {
                eprintln!(
                    "example-game: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set).\n\
                     Run it on a desktop, under a virtual display (`xvfb-run -a cargo run -p example-game`),\n\
                     or render offscreen: `cargo run -p example-game -- --screenshot out.png`"
                );
                return ExitCode::from(1);
            }
            app.add_plugins(
                DefaultPlugins
                    .set(ImagePlugin::default_nearest())
                    .set(WindowPlugin {
                        primary_window: Some(Window {
                            title: "pixelgen example".into(),
                            resolution: WindowResolution::new(VIEW_WIDTH, VIEW_HEIGHT),
                            ..default()
                        }),
                        ..default()
                    }),
            );
        }
    }
    if let Some(port) = options.remote_port {
        add_remote(&mut app, port);
    }
    let sprites_plugin = match options.live_index {
        // Another copy of these sprites (a crate with the same sprites.ron, say, that
        // `cargo pixelgen watch` republishes): the sprite set must be the same.
        Some(path) => SpritesPlugin.with_live_index(path),
        None => SpritesPlugin,
    };
    app.add_plugins(sprites_plugin)
        .insert_resource(ClearColor(Color::srgb_u8(0x18, 0x14, 0x25)))
        .init_resource::<Collected>()
        .add_systems(Startup, setup)
        .add_systems(
            Update,
            (
                move_hero,
                animate_hero,
                animate::<characters::Atlas>,
                animate::<items::Atlas>,
                wander,
                pick_up,
                follow_camera,
                layout_hud,
            )
                .chain(),
        );
    match app.run() {
        AppExit::Success => ExitCode::SUCCESS,
        AppExit::Error(_) => ExitCode::FAILURE,
    }
}

/// Dev builds answer the Bevy Remote Protocol on localhost: Bevy's own methods and
/// pixelgen's (`pixelgen.reload`, `pixelgen.screenshot`), which `cargo pixelgen mcp` calls.
/// Release builds never listen.
fn add_remote(app: &mut App, port: u16) {
    if !cfg!(debug_assertions) {
        return;
    }
    // Bevy's server fails silently when the port is taken; say so instead.
    if let Err(error) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
        eprintln!(
            "example-game: the remote protocol cannot listen on 127.0.0.1:{port} ({error}); \
             running without it (choose another port with --remote-port, or --no-remote)"
        );
        return;
    }
    app.add_plugins((
        RemotePlugin::default(),
        RemoteHttpPlugin::default()
            .with_address(std::net::Ipv4Addr::LOCALHOST)
            .with_port(port),
    ));
    println!("example-game: remote protocol on http://127.0.0.1:{port}");
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        view: View::Window,
        remote_port: Some(DEFAULT_REMOTE_PORT),
        live_index: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--screenshot" => {
                let path = args.next().ok_or("--screenshot needs a file name")?;
                options.view = View::Screenshot(PathBuf::from(path));
            }
            "--headless" => options.view = View::Headless,
            "--remote-port" => {
                let port = args.next().ok_or("--remote-port needs a port number")?;
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("--remote-port {port}: not a port number (1–65535)"))?;
                options.remote_port = Some(port);
            }
            "--no-remote" => options.remote_port = None,
            "--live-index" => {
                let path = args
                    .next()
                    .ok_or("--live-index needs the path of an index.json")?;
                options.live_index = Some(PathBuf::from(path));
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(options)
}

#[derive(Component)]
struct Hero {
    walking: bool,
    frame_clock: f32,
}

/// A looping animation of atlas `A` (creatures in `characters`, coins in `items`).
#[derive(Component)]
struct Animated<A: AtlasData> {
    frames: sprites::Animation<A>,
    fps: f32,
    clock: f32,
}

#[derive(Component)]
struct Wanderer {
    home: Vec2,
    radius: Vec2,
    speed: f32,
    phase: f32,
}

#[derive(Component, Clone, Copy)]
struct Pickup(sprites::SpriteIndex<items::Atlas>);

#[derive(Component)]
struct HudIcon(usize);

#[derive(Component)]
struct Solid;

#[derive(Resource, Default)]
struct Collected(Vec<sprites::SpriteIndex<items::Atlas>>);

/// In screenshot mode the knight walks by itself.
#[derive(Resource)]
struct Autopilot;

/// Things to pick up, on tiles kept free of scenery.
const PICKUPS: [(sprites::SpriteIndex<items::Atlas>, i32, i32); 6] = [
    (items::POTION, 6, 4),
    (items::SWORD, 9, 7),
    (items::HEART, 14, 5),
    (items::POTION, 18, 12),
    (items::HEART, 5, 13),
    (items::SWORD, 20, 3),
];
const COINS: [(i32, i32); 7] = [(7, 4), (8, 4), (11, 9), (12, 9), (16, 14), (3, 10), (19, 8)];

fn tile_center(x: i32, y: i32) -> Vec2 {
    Vec2::new(x as f32 * TILE, y as f32 * TILE)
}

/// A fixed pseudo-random number per tile, so the map is the same every run.
fn tile_noise(x: i32, y: i32) -> u32 {
    let mut h = (x as u32).wrapping_mul(0x9E37_79B9) ^ (y as u32).wrapping_mul(0x85EB_CA6B);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^ (h >> 12)
}

fn setup(
    mut commands: Commands,
    atlases: Res<Atlases>,
    mut images: ResMut<Assets<Image>>,
    offscreen: Option<ResMut<Offscreen>>,
) {
    let mut camera = commands.spawn((
        Camera2d,
        Projection::Orthographic(OrthographicProjection {
            scale: 1.0 / ZOOM,
            ..OrthographicProjection::default_2d()
        }),
        Transform::from_xyz(tile_center(4, 4).x, tile_center(4, 4).y, 100.0),
    ));
    if let Some(mut offscreen) = offscreen {
        let mut target =
            Image::new_target_texture(VIEW_WIDTH, VIEW_HEIGHT, TextureFormat::Rgba8UnormSrgb, None);
        target.texture_descriptor.usage |= TextureUsages::COPY_SRC;
        let handle = images.add(target);
        camera.insert(RenderTarget::Image(handle.clone().into()));
        offscreen.target = Some(handle);
    }

    for y in 0..MAP_HEIGHT {
        for x in 0..MAP_WIDTH {
            let at = tile_center(x, y);
            commands.spawn((
                atlases.sprite(tiles::GRASS),
                Transform::from_xyz(at.x, at.y, 0.0),
            ));
            let border = x == 0 || y == 0 || x == MAP_WIDTH - 1 || y == MAP_HEIGHT - 1;
            let noise = tile_noise(x, y) % 100;
            let near_start = (x - 4).abs() <= 2 && (y - 4).abs() <= 2;
            let reserved =
                PICKUPS.iter().any(|&(_, px, py)| (px, py) == (x, y)) || COINS.contains(&(x, y));
            let scenery = if border {
                Some(tiles::WALL)
            } else if near_start || reserved {
                None
            } else if noise < 6 {
                Some(tiles::TREE)
            } else if noise < 9 {
                Some(tiles::ROCK)
            } else {
                None
            };
            if let Some(index) = scenery {
                commands.spawn((
                    atlases.sprite(index),
                    Transform::from_xyz(at.x, at.y, 1.0 + (MAP_HEIGHT - y) as f32 * 0.01),
                    Solid,
                ));
            }
        }
    }

    for (index, x, y) in PICKUPS {
        let at = tile_center(x, y);
        commands.spawn((
            atlases.sprite(index),
            Transform::from_xyz(at.x, at.y, 2.0),
            Pickup(index),
        ));
    }
    for (i, (x, y)) in COINS.into_iter().enumerate() {
        let at = tile_center(x, y);
        commands.spawn((
            atlases.sprite(items::COIN.frame(i)),
            Transform::from_xyz(at.x, at.y, 2.0),
            Pickup(items::COIN.frame(0)),
            Animated {
                frames: items::COIN,
                fps: 10.0,
                clock: i as f32 * 0.1,
            },
        ));
    }

    let creatures = [
        (characters::SLIME, 10, 11, Vec2::new(40.0, 8.0), 0.6),
        (characters::SLIME, 17, 6, Vec2::new(24.0, 24.0), 0.8),
        (characters::BAT, 8, 9, Vec2::new(50.0, 30.0), 1.4),
        (characters::BAT, 15, 12, Vec2::new(60.0, 20.0), 1.1),
    ];
    for (i, (frames, x, y, radius, speed)) in creatures.into_iter().enumerate() {
        let home = tile_center(x, y);
        commands.spawn((
            atlases.sprite(frames.frame(i)),
            Transform::from_xyz(home.x, home.y, 3.0),
            Animated {
                frames,
                fps: 6.0,
                clock: i as f32 * 0.13,
            },
            Wanderer {
                home,
                radius,
                speed,
                phase: i as f32,
            },
        ));
    }

    let start = tile_center(4, 4);
    commands.spawn((
        atlases.sprite(characters::HERO),
        Transform::from_xyz(start.x, start.y, 4.0),
        Hero {
            walking: false,
            frame_clock: 0.0,
        },
    ));
}

fn move_hero(
    keys: Option<Res<ButtonInput<KeyCode>>>,
    autopilot: Option<Res<Autopilot>>,
    time: Res<Time>,
    solids: Query<&Transform, (With<Solid>, Without<Hero>)>,
    mut hero: Query<(&mut Transform, &mut Sprite, &mut Hero)>,
) {
    let Ok((mut transform, mut sprite, mut hero)) = hero.single_mut() else {
        return;
    };
    let mut direction = Vec2::ZERO;
    if autopilot.is_some() {
        direction = Vec2::X;
    } else if let Some(keys) = keys {
        for (key_a, key_b, step) in [
            (KeyCode::ArrowLeft, KeyCode::KeyA, Vec2::NEG_X),
            (KeyCode::ArrowRight, KeyCode::KeyD, Vec2::X),
            (KeyCode::ArrowUp, KeyCode::KeyW, Vec2::Y),
            (KeyCode::ArrowDown, KeyCode::KeyS, Vec2::NEG_Y),
        ] {
            if keys.pressed(key_a) || keys.pressed(key_b) {
                direction += step;
            }
        }
    }
    hero.walking = direction != Vec2::ZERO;
    if !hero.walking {
        return;
    }
    if direction.x != 0.0 {
        sprite.flip_x = direction.x < 0.0;
    }
    let step = direction.normalize() * HERO_SPEED * time.delta_secs();
    // Move along each axis separately so the knight slides along walls.
    for axis_step in [Vec2::new(step.x, 0.0), Vec2::new(0.0, step.y)] {
        let next = transform.translation.truncate() + axis_step;
        let blocked = solids.iter().any(|solid| {
            let d = (solid.translation.truncate() - next).abs();
            d.x < TILE * 0.7 && d.y < TILE * 0.6
        });
        if !blocked {
            transform.translation.x = next.x;
            transform.translation.y = next.y;
        }
    }
}

fn animate_hero(
    time: Res<Time>,
    atlases: Res<Atlases>,
    mut heroes: Query<(&mut Hero, &mut Sprite)>,
) {
    for (mut hero, mut sprite) in &mut heroes {
        let index = if hero.walking {
            hero.frame_clock += time.delta_secs();
            characters::HERO_WALK.frame((hero.frame_clock * 8.0) as usize)
        } else {
            hero.frame_clock = 0.0;
            characters::HERO
        };
        sprite.texture_atlas = Some(atlases.texture_atlas(index));
    }
}

fn animate<A: AtlasData>(
    time: Res<Time>,
    atlases: Res<Atlases>,
    mut animated: Query<(&mut Animated<A>, &mut Sprite)>,
) {
    for (mut animation, mut sprite) in &mut animated {
        animation.clock += time.delta_secs();
        let index = animation
            .frames
            .frame((animation.clock * animation.fps) as usize);
        sprite.texture_atlas = Some(atlases.texture_atlas(index));
    }
}

fn wander(time: Res<Time>, mut wanderers: Query<(&Wanderer, &mut Transform, &mut Sprite)>) {
    let t = time.elapsed_secs();
    for (wanderer, mut transform, mut sprite) in &mut wanderers {
        let angle = t * wanderer.speed + wanderer.phase;
        let at = wanderer.home
            + Vec2::new(
                angle.cos() * wanderer.radius.x,
                (angle * 2.0).sin() * wanderer.radius.y,
            );
        sprite.flip_x = angle.sin() > 0.0;
        transform.translation.x = at.x;
        transform.translation.y = at.y;
    }
}

fn pick_up(
    mut commands: Commands,
    mut collected: ResMut<Collected>,
    atlases: Res<Atlases>,
    hero: Query<&Transform, With<Hero>>,
    pickups: Query<(Entity, &Transform, &Pickup)>,
) {
    let Ok(hero) = hero.single() else {
        return;
    };
    for (entity, transform, pickup) in &pickups {
        if transform
            .translation
            .truncate()
            .distance(hero.translation.truncate())
            < 16.0
        {
            commands.entity(entity).despawn();
            let slot = collected.0.len();
            collected.0.push(pickup.0);
            commands.spawn((
                atlases.sprite(pickup.0),
                Transform::from_xyz(0.0, 0.0, 50.0),
                HudIcon(slot),
            ));
        }
    }
}

fn follow_camera(
    hero: Query<&Transform, With<Hero>>,
    mut camera: Query<&mut Transform, (With<Camera2d>, Without<Hero>)>,
) {
    let (Ok(hero), Ok(mut camera)) = (hero.single(), camera.single_mut()) else {
        return;
    };
    let half = Vec2::new(VIEW_WIDTH as f32, VIEW_HEIGHT as f32) / (2.0 * ZOOM);
    let min = tile_center(0, 0) - TILE / 2.0 + half;
    let max = tile_center(MAP_WIDTH - 1, MAP_HEIGHT - 1) + TILE / 2.0 - half;
    let target = hero.translation.truncate().clamp(min, max);
    camera.translation.x = target.x.round();
    camera.translation.y = target.y.round();
}

/// Collected items line up along the top of the view.
fn layout_hud(
    camera: Query<&Transform, With<Camera2d>>,
    mut icons: Query<(&HudIcon, &mut Transform), Without<Camera2d>>,
) {
    let Ok(camera) = camera.single() else {
        return;
    };
    let top_left = camera.translation.truncate()
        + Vec2::new(-(VIEW_WIDTH as f32), VIEW_HEIGHT as f32) / (2.0 * ZOOM);
    for (icon, mut transform) in &mut icons {
        transform.translation.x = top_left.x + 12.0 + icon.0 as f32 * 18.0;
        transform.translation.y = top_left.y - 12.0;
    }
}

/// Offscreen modes: the image the camera renders into (set up at startup).
#[derive(Resource, Default)]
struct Offscreen {
    target: Option<Handle<Image>>,
}

/// Screenshot mode: after some frames, capture the render target, save it, exit.
#[derive(Resource)]
struct ScreenshotJob {
    path: PathBuf,
    frames_left: u32,
    outcome: Option<Result<(), String>>,
}

fn screenshot_when_ready(
    mut commands: Commands,
    offscreen: Res<Offscreen>,
    mut job: ResMut<ScreenshotJob>,
    mut exit: MessageWriter<AppExit>,
) {
    if let Some(outcome) = job.outcome.take() {
        match outcome {
            Ok(()) => {
                println!("example-game: wrote {}", job.path.display());
                exit.write(AppExit::Success);
            }
            Err(message) => {
                eprintln!(
                    "example-game: cannot write the screenshot {}: {message}",
                    job.path.display()
                );
                exit.write(AppExit::error());
            }
        }
        return;
    }
    if job.frames_left > 0 {
        job.frames_left -= 1;
        if job.frames_left == 0
            && let Some(target) = offscreen.target.clone()
        {
            commands
                .spawn(Screenshot::image(target))
                .observe(save_screenshot);
        }
    }
}

fn save_screenshot(captured: On<ScreenshotCaptured>, mut job: ResMut<ScreenshotJob>) {
    let outcome = captured
        .image
        .clone()
        .try_into_dynamic()
        .map_err(|e| e.to_string())
        .and_then(|image| {
            image
                .to_rgb8()
                .save_with_format(&job.path, image::ImageFormat::Png)
                .map_err(|e| e.to_string())
        });
    job.outcome = Some(outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        parse_args(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_command_line_picks_the_view_and_the_remote_port() {
        assert_eq!(
            parse(&[]).unwrap(),
            Options {
                view: View::Window,
                remote_port: Some(DEFAULT_REMOTE_PORT),
                live_index: None,
            }
        );
        assert_eq!(
            parse(&[
                "--headless",
                "--remote-port",
                "15800",
                "--live-index",
                "i.json"
            ])
            .unwrap(),
            Options {
                view: View::Headless,
                remote_port: Some(15800),
                live_index: Some(PathBuf::from("i.json")),
            }
        );
        assert_eq!(
            parse(&["--no-remote", "--screenshot", "a.png"]).unwrap(),
            Options {
                view: View::Screenshot(PathBuf::from("a.png")),
                remote_port: None,
                live_index: None,
            }
        );
        for (args, error) in [
            (&["--screenshot"][..], "--screenshot needs a file name"),
            (&["--remote-port", "0"][..], "not a port number"),
            (&["--remote-port", "http"][..], "not a port number"),
            (&["--remote-port"][..], "needs a port number"),
            (&["--live-index"][..], "needs the path of an index.json"),
            (&["--fast"][..], "unknown argument: --fast"),
        ] {
            let message = parse(args).unwrap_err();
            assert!(message.contains(error), "{args:?}: {message}");
        }
    }
}
