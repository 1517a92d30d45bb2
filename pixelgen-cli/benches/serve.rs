//! The warm server's target: with `cargo pixelgen serve` running, a `cargo pixelgen
//! generate` after a prompt edit of one sprite takes at most that sprite's sampling time
//! plus one second. Prints a markdown table.
//!
//! `cargo bench -p pixelgen-cli --bench serve`
//!
//! - Model: SD1.5's architecture with random weights: `PIXELGEN_BENCH_MODEL` (a diffusers
//!   folder), else the `diffusion` bench's `target/bench-sd15/model` (diffusers-made), else
//!   `target/bench-sd15-candle/` (made here with candle's random init when missing).
//! - One sprite, 32×32 with a palette, drawn at `PIXELGEN_BENCH_SERVE_SIZE`² (default 256)
//!   with `PIXELGEN_BENCH_SERVE_STEPS` Euler steps (default 2), guidance 7.5, on the CPU.
//! - Warm: `serve` started; one `generate` loads the model (warm-up); then
//!   `PIXELGEN_BENCH_RUNS` (default 2) prompt edits, each timed end to end (the whole
//!   `cargo pixelgen generate` process) against the server's sampling time for it.
//! - Cold: the server stopped, one more prompt edit with `generate --no-server` (loads
//!   the model in-process, as every build without the server does).
//!
//! The machine's 1-minute load average is printed with the numbers: other work on the
//! machine slows sampling and the rest alike.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pixelgen_test_support::bench::{env_or, load_average};
use pixelgen_test_support::process::{self, KillOnDrop};
use pixelgen_test_support::{fixtures, game};

#[path = "../../pixelgen-build/benches/common/sd15.rs"]
mod sd15;

/// The 1-minute load average as the table shows it.
fn load() -> String {
    load_average().map_or_else(|| "?".to_string(), |load| format!("{load:.2}"))
}

fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PIXELGEN_BENCH_MODEL") {
        return PathBuf::from(dir);
    }
    let target = fixtures::target_dir();
    let shared = target.join("bench-sd15/model");
    if shared.join("bench-stamp.json").is_file() {
        return shared;
    }
    let dir = target.join("bench-sd15-candle");
    sd15::make_candle_model(&dir, &fixtures::tiny_model("sd1").join("tokenizer"));
    dir
}

fn cli() -> Command {
    let mut command = process::cargo_pixelgen(env!("CARGO_BIN_EXE_cargo-pixelgen"));
    command.env("PIXELGEN_DEVICE", "cpu");
    command
}

struct Game {
    dir: tempfile::TempDir,
    model: PathBuf,
    size: u32,
    steps: u32,
}

impl Game {
    fn write(&self, prompt: &str) {
        let manifest = format!(
            r#"(sprites: {{ "hero": (prompt: "{prompt}", seed: 1, size: (32, 32), palette: "endesga-32",
                generator: Diffusion(model: "{}", steps: {}, guidance: 7.5, scheduler: Euler,
                                     resolution: ({size}, {size}))) }})"#,
            self.model.display(),
            self.steps,
            size = self.size
        );
        std::fs::write(self.dir.path().join("sprites.ron"), manifest).expect("manifest");
    }

    /// Runs `generate` with `args`; the wall time of the whole process.
    fn generate(&self, args: &[&str], lock_dir: &Path) -> f64 {
        let started = Instant::now();
        let output = cli()
            .arg("generate")
            .args(args)
            .arg("--manifest-path")
            .arg(self.dir.path().join("Cargo.toml"))
            .env("PIXELGEN_LOCK_DIR", lock_dir)
            .output()
            .expect("run cargo-pixelgen");
        let seconds = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("1 generated"),
            "generate failed:\n{stdout}\n{stderr}"
        );
        assert!(
            !stderr.contains("warm server"),
            "the server was not used:\n{stderr}"
        );
        seconds
    }
}

struct Serve {
    _child: KillOnDrop,
    socket: PathBuf,
}

impl Serve {
    fn start(dir: &Path, lock_dir: &Path) -> Serve {
        let socket = dir.join("serve.sock");
        let mut child = cli()
            .args(["serve", "--idle-timeout", "0", "--socket"])
            .arg(&socket)
            .env("PIXELGEN_LOCK_DIR", lock_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start serve");
        if let Err(e) = process::wait_for_file(&socket, &mut child, Duration::from_secs(60)) {
            panic!("serve did not start: {e}");
        }
        Serve {
            _child: KillOnDrop(child),
            socket,
        }
    }

    /// The server's sampling time for its last request, in seconds: text encoding, UNet
    /// steps and VAE decode (its `Timings`, as `serve --status` reports them).
    fn last_sampling(&self) -> f64 {
        let output = cli()
            .args(["serve", "--status", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("serve --status");
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("status");
        let stages = &status["last_timings"]["stages"];
        ["text_encode", "unet", "vae_decode"]
            .iter()
            .map(|stage| stages[stage]["total"].as_f64().unwrap_or(f64::NAN) / 1e9)
            .sum()
    }
}

fn main() {
    let size = env_or("PIXELGEN_BENCH_SERVE_SIZE", 256u32);
    let steps = env_or("PIXELGEN_BENCH_SERVE_STEPS", 2u32);
    let runs = env_or("PIXELGEN_BENCH_RUNS", 2usize).max(1);
    let model = model_dir();
    let work = tempfile::tempdir().expect("temp dir");
    let lock_dir = work.path().join("lock");
    std::fs::create_dir_all(&lock_dir).expect("lock dir");
    let game = Game {
        dir: tempfile::tempdir().expect("game dir"),
        model,
        size,
        steps,
    };
    game::write_crate(game.dir.path(), "bench-game");

    let mut rows = Vec::new();
    {
        let serve = Serve::start(work.path(), &lock_dir);
        let server = ["--server", serve.socket.to_str().expect("utf-8 path")];
        game.write("pixel art knight");
        let load_before = load();
        let first = game.generate(&server, &lock_dir);
        rows.push((
            "warm-up: first `generate` through the server (loads the model)".to_string(),
            first,
            serve.last_sampling(),
            load_before,
        ));
        for run in 0..runs {
            game.write(&format!("pixel art knight, edit {run}"));
            let load = load();
            let seconds = game.generate(&server, &lock_dir);
            rows.push((
                format!(
                    "prompt edit {}: `generate` through the warm server",
                    run + 1
                ),
                seconds,
                serve.last_sampling(),
                load,
            ));
        }
    }
    game.write("pixel art knight, without the server");
    let load = load();
    let cold = game.generate(&["--no-server"], &lock_dir);
    rows.push((
        "prompt edit: `generate --no-server` (in-process, loads the model)".to_string(),
        cold,
        f64::NAN,
        load,
    ));

    println!();
    println!(
        "SD1.5-size model ({}), CPU, one 32×32 sprite drawn at {size}×{size}, {steps} Euler steps, guidance 7.5",
        game.model.display()
    );
    println!();
    println!(
        "| run | `generate` wall time | server's sampling time | wall − sampling | load average (1 min) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (label, wall, sampling, load) in &rows {
        let (sampling, overhead) = if sampling.is_nan() {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("{sampling:.2} s"),
                format!("{:.2} s", wall - sampling),
            )
        };
        println!("| {label} | {wall:.2} s | {sampling} | {overhead} | {load} |");
    }
    let warm: Vec<&(String, f64, f64, String)> = rows[1..=runs].iter().collect();
    let met = warm
        .iter()
        .all(|(_, wall, sampling, _)| *wall <= sampling + 1.0);
    println!();
    println!(
        "target (warm `generate` ≤ sampling + 1 s): {}",
        if met { "met" } else { "NOT met" }
    );
}
