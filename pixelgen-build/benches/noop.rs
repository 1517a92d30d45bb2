//! The no-op cost of pixelgen's build script: every sprite cached, nothing to generate.
//! Prints a table with 1,000 and 10,000 sprites, beside cargo's own no-op build time.
//!
//! `cargo bench -p pixelgen-build --bench noop`

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pixelgen_build::Build;
use pixelgen_test_support::{bench, game};

const RUNS: usize = 15;

fn manifest(sprites: usize) -> String {
    let words = [
        "knight", "slime", "bat", "sword", "potion", "coin", "tree", "rock",
    ];
    let colours = ["red", "blue", "green", "gold", "purple"];
    let mut text = String::from(
        "(\n  defaults: (size: (16, 16), palette: \"db32\"),\n  atlases: { \"a\": (), \"b\": () },\n  sprites: {\n",
    );
    for i in 0..sprites {
        let atlas = if i % 2 == 0 { "a" } else { "b" };
        text.push_str(&format!(
            "    \"s{i}\": (prompt: \"{} {}\", seed: {i}, atlas: \"{atlas}\"),\n",
            colours[i % colours.len()],
            words[i % words.len()]
        ));
    }
    text.push_str("  },\n)\n");
    text
}

fn median(samples: Vec<Duration>) -> Duration {
    Duration::from_secs_f64(bench::median(samples.iter().map(Duration::as_secs_f64)))
}

fn prepare(dir: &Path, sprites: usize) -> Build {
    game::write_crate(dir, "bench-game");
    std::fs::write(dir.join("sprites.ron"), manifest(sprites)).expect("sprites.ron");
    let build = Build::new()
        .crate_dir(dir)
        .out_dir(dir.join("out"))
        .cache_dir(dir.join("cache"))
        .offline(false);
    let first = build.clone().run().expect("first build generates");
    assert_eq!(first.generated, sprites);
    build
}

fn cargo_noop_build(dir: &Path) -> Duration {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = || {
        let start = Instant::now();
        let status = Command::new(&cargo)
            .args(["build", "--quiet", "--offline"])
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .status()
            .expect("cargo runs");
        assert!(status.success());
        start.elapsed()
    };
    run(); // the real build
    median((0..RUNS).map(|_| run()).collect())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let mut rows = Vec::new();
    for sprites in [1_000, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let build = prepare(dir.path(), sprites);
        let samples: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let summary = build.clone().run().expect("no-op build");
                let elapsed = start.elapsed();
                assert_eq!(summary.generated, 0);
                elapsed
            })
            .collect();
        rows.push((sprites, median(samples)));
    }

    // cargo's own no-op: an empty crate already built.
    let empty = tempfile::tempdir().expect("temp dir");
    game::write_crate(empty.path(), "empty");
    let cargo = cargo_noop_build(empty.path());

    println!();
    println!("| what (median of {RUNS}) | time |");
    println!("|---|---|");
    for (sprites, time) in rows {
        println!(
            "| pixelgen build script, {sprites} sprites, all cached | {:.1} ms |",
            time.as_secs_f64() * 1e3
        );
    }
    println!(
        "| `cargo build` no-op (empty crate, nothing to do) | {:.1} ms |",
        cargo.as_secs_f64() * 1e3
    );
}
