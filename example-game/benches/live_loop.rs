//! The live loop, measured end to end: a prompt edit saved in `sprites.ron` → new pixels on
//! the screen of the running example game.
//!
//! ```sh
//! cargo build -p pixelgen-cli            # the `cargo-pixelgen` this measures, beside the game
//! cargo bench --profile dev -p example-game --bench live_loop
//! ```
//!
//! A temporary crate holds a copy of the example's `sprites.ron`; `cargo pixelgen watch`
//! republishes its atlases; the example game runs headless (lavapipe where there is no GPU)
//! with `--live-index` on them and answers `pixelgen.screenshot` over BRP. Each trial saves
//! a new prompt for the grass tile (which covers most of the screen; a new colour word each
//! time), waits for watch's
//! summary line (saved → republished), then takes screenshots until the picture changes
//! (saved → on screen). A screenshot's own round trip is measured too: it bounds how finely
//! "on screen" can be timed. Then the same with the grass drawn by Stable Diffusion (the
//! tiny SD1 fixture model, 20 Euler steps at 64×64) through a warm `cargo pixelgen serve`,
//! whose drawing time for each trial (text encoding, UNet steps, VAE decode) comes from
//! `serve --status`: "on screen − drawing" is what the live loop adds to sampling.
//!
//! Needs a Vulkan driver (mesa-vulkan-drivers) and the two binaries; says so otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pixelgen_test_support::bench::median;
use pixelgen_test_support::fs::copy_dir;
use pixelgen_test_support::process::{self, KillOnDrop, lines_of, wait_for_line};
use pixelgen_test_support::{fixtures, game, headless, net};
use serde_json::{Value, json};

const TRIALS: usize = 5;
const COLOURS: [&str; 5] = ["blue", "red", "yellow", "purple", "orange"];

fn call(port: u16, method: &str, params: Value) -> Result<Value, String> {
    let response = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
        .post(&format!("http://127.0.0.1:{port}/"))
        .send_json(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}));
    let body: Value = match response {
        Ok(r) => r.into_json().map_err(|e| e.to_string())?,
        Err(ureq::Error::Status(_, r)) => r.into_json().map_err(|e| e.to_string())?,
        Err(e) => return Err(e.to_string()),
    };
    body.get("result")
        .cloned()
        .ok_or_else(|| format!("{method}: {body}"))
}

/// The game's picture now (decoded RGBA bytes).
fn screenshot(port: u16, ticket: &mut u64) -> Vec<u8> {
    *ticket += 1;
    let result = call(port, "pixelgen.screenshot", json!({ "ticket": *ticket })).unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(result["png"].as_str().unwrap())
        .unwrap();
    image::load_from_memory(&png)
        .unwrap()
        .into_rgba8()
        .into_raw()
}

struct Trial {
    republished_ms: f64,
    on_screen_ms: f64,
    sampling_ms: Option<f64>,
}

/// Runs the trials for one manifest (its grass prompt is `{prompt}` to be replaced); then,
/// with `mcp_python`, the MCP client's round trips on the same crate and running game (watch
/// stopped first, so that only the MCP server generates).
fn measure(
    cli: &Path,
    game_binary: &Path,
    manifest_template: &str,
    model: Option<&Path>,
    mcp_python: Option<&Path>,
) -> (Vec<Trial>, f64, Option<Value>) {
    let manifest = |prompt: &str| manifest_template.replace("{prompt}", prompt);
    let dir = game::temp_crate("live-loop", &manifest("green grass tile"));
    let socket = dir.path().join("serve.sock");
    let _server = model.map(|model| {
        copy_dir(model, &dir.path().join("model"));
        let mut server = process::cargo_pixelgen(cli)
            .args(["serve", "--socket"])
            .arg(&socket)
            .env("PIXELGEN_DEVICE", "cpu")
            .env("PIXELGEN_LOCK_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if let Err(e) = process::wait_for_file(&socket, &mut server, Duration::from_secs(30)) {
            panic!("the server did not start: {e}");
        }
        KillOnDrop(server)
    });
    let mut watch = process::cargo_pixelgen(cli);
    watch
        .args(["watch", "--manifest-path"])
        .arg(dir.path().join("Cargo.toml"))
        .env("PIXELGEN_DEVICE", "cpu")
        .env("PIXELGEN_LOCK_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if model.is_some() {
        watch.env("PIXELGEN_SERVER", &socket);
    } else {
        watch.env("PIXELGEN_SERVER", "off");
    }
    let mut watch = watch.spawn().unwrap();
    let watch_lines = lines_of(watch.stdout.take().unwrap());
    let watch_guard = KillOnDrop(watch);
    let first = wait_for_line(
        &watch_lines,
        "pixelgen watch: watching",
        Duration::from_secs(300),
    );
    let live_index = first
        .last()
        .and_then(|line| line.split("live atlases in ").nth(1))
        .map(|d| PathBuf::from(d.split(';').next().unwrap()).join("pixelgen/index.json"))
        .unwrap();

    let port = net::free_port();
    let game = headless::without_display(&mut Command::new(game_binary))
        .args([
            "--headless",
            "--remote-port",
            &port.to_string(),
            "--live-index",
        ])
        .arg(&live_index)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _game = KillOnDrop(game);
    let deadline = Instant::now() + Duration::from_secs(120);
    let reload = loop {
        match call(port, "pixelgen.reload", Value::Null) {
            Ok(answer) => break answer,
            Err(e) if Instant::now() > deadline => panic!("the game did not answer: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(reload["sets"][0]["status"], "reloaded", "{reload}");
    let mut ticket = 0;
    // Let the first frames settle (the knight walks: the picture changes by itself a
    // little; the grass covers most of it, so a change of most pixels is the signal).
    std::thread::sleep(Duration::from_secs(2));
    let round_trips: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            screenshot(port, &mut ticket);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let round_trip = median(round_trips);

    let mut trials = Vec::new();
    for trial in 0..TRIALS {
        let before = screenshot(port, &mut ticket);
        // A colour word recolours the procedural grass (its layout follows the seed).
        let prompt = format!("{} grass tile", COLOURS[trial % COLOURS.len()]);
        let saved = Instant::now();
        std::fs::write(dir.path().join("sprites.ron"), manifest(&prompt)).unwrap();
        wait_for_line(&watch_lines, "generated", Duration::from_secs(60));
        let republished = saved.elapsed();
        let on_screen = loop {
            let now = screenshot(port, &mut ticket);
            let changed = now
                .chunks(4)
                .zip(before.chunks(4))
                .filter(|(a, b)| a != b)
                .count();
            if changed * 4 > now.len() / 4 {
                break saved.elapsed();
            }
            assert!(
                saved.elapsed() < Duration::from_secs(30),
                "no new pixels within 30 s (last: {changed} of {} pixels changed)",
                now.len() / 4
            );
        };
        let sampling_ms = model.map(|_| {
            let status = process::cargo_pixelgen(cli)
                .args(["serve", "--status", "--socket"])
                .arg(&socket)
                .output()
                .unwrap();
            let status: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
            sampling_of(&status["last_timings"])
        });
        trials.push(Trial {
            republished_ms: republished.as_secs_f64() * 1000.0,
            on_screen_ms: on_screen.as_secs_f64() * 1000.0,
            sampling_ms,
        });
    }
    drop(watch_guard);
    let mcp = mcp_python.map(|python| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/mcp_round_trip.py");
        let output = process::without_pixelgen_settings(&mut Command::new(python))
            .arg(script)
            .arg(cli)
            .arg(dir.path().join("Cargo.toml"))
            .arg(port.to_string())
            .arg("5")
            .env("PIXELGEN_SERVER", "off")
            .output()
            .unwrap();
        process::assert_success(&output);
        serde_json::from_slice(&output.stdout).unwrap()
    });
    (trials, round_trip, mcp)
}

/// What the server spent drawing the last request, in milliseconds: its stages (text
/// encoding, UNet steps, VAE decode), from `serve --status`'s `last_timings` (nanoseconds).
fn sampling_of(timings: &Value) -> f64 {
    timings["stages"]
        .as_object()
        .map(|stages| {
            stages
                .values()
                .filter_map(|stage| stage["total"].as_f64())
                .sum::<f64>()
                / 1e6
        })
        .unwrap_or(f64::NAN)
}

fn print(name: &str, trials: &[Trial], round_trip: f64) {
    println!("\n{name} (screenshot round trip, median of 5: {round_trip:.0} ms)");
    println!(
        "| trial | saved → republished (ms) | saved → on screen (ms) | drawing on the server (ms) |"
    );
    println!("|---|---|---|---|");
    for (i, t) in trials.iter().enumerate() {
        let sampling = t.sampling_ms.map_or("—".to_owned(), |s| format!("{s:.0}"));
        println!(
            "| {} | {:.0} | {:.0} | {sampling} |",
            i + 1,
            t.republished_ms,
            t.on_screen_ms
        );
    }
    let republished = trials.iter().map(|t| t.republished_ms);
    let on_screen = trials.iter().map(|t| t.on_screen_ms);
    let beyond = trials
        .iter()
        .map(|t| t.on_screen_ms - t.sampling_ms.unwrap_or(0.0));
    println!(
        "| median | {:.0} | {:.0} | on screen − drawing: {:.0} |",
        median(republished),
        median(on_screen),
        median(beyond)
    );
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let game_binary = PathBuf::from(env!("CARGO_BIN_EXE_example-game"));
    let cli = game_binary.with_file_name("cargo-pixelgen");
    if !cli.is_file() {
        eprintln!(
            "live_loop: {} is missing: run `cargo build -p pixelgen-cli` first",
            cli.display()
        );
        std::process::exit(1);
    }
    if !headless::vulkan_driver_installed() {
        eprintln!("live_loop: no Vulkan driver (apt-get install mesa-vulkan-drivers)");
        std::process::exit(1);
    }
    let manifest = std::fs::read_to_string(root.join("sprites.ron")).unwrap();
    assert!(manifest.contains("\"green grass tile\""));
    let procedural = manifest.replace("\"green grass tile\"", "\"{prompt}\"");
    let python = std::env::var_os("PIXELGEN_MCP_PYTHON").map(PathBuf::from);
    let (trials, round_trip, mcp) =
        measure(&cli, &game_binary, &procedural, None, python.as_deref());
    print("Procedural grass", &trials, round_trip);
    match mcp {
        Some(Value::Object(tools)) => {
            println!(
                "\nMCP round trips from the Python SDK client, the example game's sprites, the game running (ms)"
            );
            println!("| tool | median | min | max |");
            println!("|---|---|---|---|");
            for (tool, times) in tools {
                let times: Vec<f64> = times
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_f64)
                    .collect();
                let (min, max) = (
                    times.iter().copied().fold(f64::INFINITY, f64::min),
                    times.iter().copied().fold(0.0, f64::max),
                );
                println!(
                    "| {tool} | {:.0} | {min:.0} | {max:.0} |",
                    median(times.iter().copied())
                );
            }
        }
        _ => println!("\n(MCP round trips: set PIXELGEN_MCP_PYTHON to a Python with `mcp`)"),
    }

    let diffusion = procedural.replace(
        "\"grass\":     (prompt: \"{prompt}\", seed: 1, atlas: \"tiles\"),",
        "\"grass\":     (prompt: \"{prompt}\", seed: 1, atlas: \"tiles\", generator: Diffusion(model: \"model\", steps: 20, guidance: 7.0, scheduler: Euler, resolution: (64, 64))),",
    );
    assert_ne!(
        diffusion, procedural,
        "the grass entry moved: update the bench"
    );
    let model = fixtures::tiny_model("sd1");
    let (trials, round_trip, _) = measure(&cli, &game_binary, &diffusion, Some(&model), None);
    print(
        "Diffusion grass (tiny SD1 fixture, 20 Euler steps, 64×64, warm server)",
        &trials,
        round_trip,
    );
}
