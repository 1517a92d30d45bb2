//! `cargo pixelgen status | check | generate` on a temporary game crate.

use std::path::Path;
use std::process::{Command, Output};

use pixelgen_test_support::fs::{cache_entries, read_json};
use pixelgen_test_support::process::{self, lines_of, wait_for_line};
use pixelgen_test_support::{fixtures, game, images};

const MANIFEST: &str = r#"(
    defaults: (size: (16, 16), palette: "db16"),
    sprites: {
        "hero":   (prompt: "knight", seed: 1, frames: 2),
        "potion": (prompt: "red potion", seed: 2),
        "coin":   (prompt: "gold coin", seed: 3),
    },
)"#;

fn game() -> tempfile::TempDir {
    game::temp_crate("cli-game", MANIFEST)
}

/// `cargo pixelgen`, as cargo runs it, without the developer's pixelgen settings.
fn cli() -> Command {
    process::cargo_pixelgen(env!("CARGO_BIN_EXE_cargo-pixelgen"))
}

fn pixelgen(dir: &Path, args: &[&str]) -> Output {
    cli()
        .args(args)
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .output()
        .unwrap()
}

fn status_json(dir: &Path) -> Vec<serde_json::Value> {
    let output = pixelgen(dir, &["status", "--json"]);
    process::assert_success(&output);
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn stale_names(statuses: &[serde_json::Value]) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| s["status"] == "stale")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn status_check_and_generate_agree() {
    let dir = game();
    let statuses = status_json(dir.path());
    assert_eq!(statuses.len(), 3);
    assert_eq!(stale_names(&statuses), ["coin", "hero", "potion"]);
    assert_eq!(
        statuses[0]["reasons"][0],
        "new sprite (not in sprites.lock)"
    );

    let check = pixelgen(dir.path(), &["check"]);
    assert_eq!(check.status.code(), Some(1));
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("3 of 3 sprites are stale") && text.contains("cargo pixelgen generate"),
        "{text}"
    );

    let generate = pixelgen(dir.path(), &["generate"]);
    process::assert_success(&generate);
    assert!(
        String::from_utf8_lossy(&generate.stdout)
            .contains("pixelgen: 3 sprites: 3 generated, 0 cached")
    );
    assert!(dir.path().join("sprites.lock").is_file());
    assert!(
        dir.path().join("cache").is_dir(),
        "the cache is at the workspace root"
    );

    assert_eq!(pixelgen(dir.path(), &["check"]).status.code(), Some(0));
    assert!(stale_names(&status_json(dir.path())).is_empty());

    // Editing one prompt makes exactly that sprite stale, with the reason.
    std::fs::write(
        dir.path().join("sprites.ron"),
        MANIFEST.replace("red potion", "blue potion"),
    )
    .unwrap();
    let statuses = status_json(dir.path());
    assert_eq!(stale_names(&statuses), ["potion"]);
    let potion = statuses.iter().find(|s| s["name"] == "potion").unwrap();
    assert_eq!(potion["reasons"], serde_json::json!(["prompt changed"]));

    let again = pixelgen(dir.path(), &["generate"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("3 sprites: 1 generated, 2 cached"));
}

#[test]
fn human_status_and_errors() {
    let dir = game();
    let output = pixelgen(dir.path(), &["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("potion") && text.contains("stale: new sprite"),
        "{text}"
    );
    assert!(text.contains("3 sprites: 0 fresh, 3 stale"), "{text}");

    std::fs::write(
        dir.path().join("sprites.ron"),
        "(sprites: { \"a\": (prompt: 3) })",
    )
    .unwrap();
    let output = pixelgen(dir.path(), &["status"]);
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("sprites.ron:1:"), "{text}");
}

/// `txt2img` with the initial latents diffusers used gives diffusers' image (the tiny SD1
/// model's first parity case: DDIM, 4 steps, guidance 7.5, a negative prompt).
#[test]
fn txt2img_with_given_latents_reproduces_diffusers() {
    let family = fixtures::family("sd1");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let output = cli()
        .args(["txt2img", "--model"])
        .arg(family.join("model"))
        .args([
            "--prompt",
            "pixel art knight with a red shield, 16-bit sprite",
            "--negative-prompt",
            "blurry, photo, watermark, low quality",
            "--steps",
            "4",
            "--guidance",
            "7.5",
            "--scheduler",
            "ddim",
            "--width",
            "64",
            "--height",
            "64",
            "--init-latents",
        ])
        .arg(family.join("latents_ddim_neg.safetensors"))
        .arg("-o")
        .arg(&out)
        .env("PIXELGEN_DEVICE", "cpu")
        .output()
        .unwrap();
    process::assert_success(&output);
    let ours = images::read_rgb(&out);
    let theirs = images::read_rgb(&family.join("expected_ddim_neg.png"));
    assert_eq!(ours.dimensions(), (64, 64));
    let (mean, _) = images::difference(&ours, &theirs);
    assert!(mean <= 1.0, "mean abs difference {mean}/255");
}

/// `txt2img --init-image/--strength/--mask/--controlnet/--control-image/--tiling`, the
/// flags outside checks call (DESIGN.md, "Conditioned drawing"), give diffusers' image of
/// every conditioned case the flags can express (all but a ControlNet guiding only part
/// of the steps, which only the manifest sets): the fixtures of
/// `pixelgen-diffusion/tests/conditioned.rs`, through the command line.
#[test]
fn txt2img_conditioned_flags_reproduce_diffusers() {
    let folder = fixtures::diffusion().join("conditioned");
    let cases: Vec<serde_json::Value> = read_json(&folder.join("cases.json"));
    let dir = tempfile::tempdir().unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let mut ran = 0;
    for case in &cases {
        let controlnets = case["controlnets"].as_array().unwrap();
        if controlnets
            .iter()
            .any(|c| c["start"].as_f64() != Some(0.0) || c["end"].as_f64() != Some(1.0))
        {
            continue;
        }
        let name = text(&case["name"]);
        let out = dir.path().join(format!("{name}.png"));
        let mut command = cli();
        command
            .args(["txt2img", "--model"])
            .arg(fixtures::diffusion().join(text(&case["model"])))
            .args(["--prompt", &text(&case["prompt"])])
            .args(["--steps", &case["steps"].to_string()])
            .args(["--guidance", &case["guidance"].to_string()])
            .args(["--scheduler", &text(&case["scheduler"])])
            .args(["--width", &case["width"].to_string()])
            .args(["--height", &case["height"].to_string()])
            .arg("--init-latents")
            .arg(folder.join(text(&case["latents"])))
            .arg("-o")
            .arg(&out)
            .env("PIXELGEN_DEVICE", "cpu");
        if let Some(negative) = case["negative_prompt"].as_str() {
            command.args(["--negative-prompt", negative]);
        }
        if let Some(image) = case["init_image"].as_str() {
            command.arg("--init-image").arg(folder.join(image));
        }
        if let Some(strength) = case["strength"].as_f64() {
            command.args(["--strength", &strength.to_string()]);
        }
        if let Some(mask) = case["mask"].as_str() {
            command.arg("--mask").arg(folder.join(mask));
        }
        for controlnet in controlnets {
            let path = folder.join(text(&controlnet["path"]));
            command
                .arg("--controlnet")
                .arg(format!("{}:{}", path.display(), controlnet["scale"]));
        }
        if let Some(image) = case["control_image"].as_str() {
            command.arg("--control-image").arg(folder.join(image));
        }
        if let Some(tiling) = case["tiling"].as_str() {
            command.args(["--tiling", tiling]);
        }
        let family = fixtures::diffusion().join(text(&case["model"]));
        for lora in case["loras"].as_array().into_iter().flatten() {
            let path = family.parent().unwrap().join(text(&lora["path"]));
            command
                .arg("--lora")
                .arg(format!("{}:{}", path.display(), lora["weight"]));
        }
        let output = command.output().unwrap();
        process::assert_success(&output);
        let expected = images::read_rgb(&folder.join(text(&case["expected"])));
        let (mean, max) = images::difference(&images::read_rgb(&out), &expected);
        assert!(mean <= 0.5, "{name}: mean {mean:.3}/255 (max {max})");
        ran += 1;
    }
    assert!(ran >= 26, "{ran} cases ran");
}

/// A seed gives one image; another seed another; LoRAs change it; bad input is a clear error.
#[test]
fn txt2img_seeds_loras_and_errors() {
    let family = fixtures::family("sd1");
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| -> (Output, std::path::PathBuf) {
        let out = dir.path().join(name);
        let output = cli()
            .args(["txt2img", "--model"])
            .arg(family.join("model"))
            .args([
                "--prompt",
                "green slime",
                "--steps",
                "2",
                "--guidance",
                "1",
                "--scheduler",
                "euler-a",
            ])
            .args(["--height", "64"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        (output, out)
    };
    let image = |path: &Path| images::read_rgb(path).into_raw();
    let (a, a_path) = run("a.png", &["--seed", "5", "--width", "64"]);
    process::assert_success(&a);
    let (_, b_path) = run("b.png", &["--seed", "5", "--width", "64"]);
    let (_, c_path) = run("c.png", &["--seed", "6", "--width", "64"]);
    assert_eq!(image(&a_path), image(&b_path), "same seed, same pixels");
    assert_ne!(
        image(&a_path),
        image(&c_path),
        "another seed, another image"
    );
    let lora = format!("{}:0.8", family.join("lora_kohya.safetensors").display());
    let (l, l_path) = run("l.png", &["--seed", "5", "--width", "64", "--lora", &lora]);
    process::assert_success(&l);
    assert_ne!(image(&a_path), image(&l_path), "the LoRA changes the image");

    let (bad, _) = run("bad.png", &["--seed", "5", "--width", "60"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a multiple of 8"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let xl_lora = format!(
        "{}:1",
        fixtures::family("sdxl")
            .join("lora_kohya.safetensors")
            .display()
    );
    let (wrong, _) = run(
        "wrong.png",
        &["--seed", "5", "--width", "64", "--lora", &xl_lora],
    );
    assert!(!wrong.status.success());
    let message = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        message.contains("lora_kohya.safetensors"),
        "the error names the LoRA file: {message}"
    );
}

/// The stage table's row for `label`: (total text, runs).
fn timing_row(table: &str, label: &str) -> Option<u64> {
    let line = table.lines().find(|l| l.trim_start().starts_with(label))?;
    let fields: Vec<&str> = line[line.find(label)? + label.len()..]
        .split_whitespace()
        .collect();
    // total value, total unit, runs, per-run value, per-run unit
    fields.get(2)?.parse().ok()
}

/// Two Diffusion sprites that name the same model, settings and LoRA (spelled
/// differently) are one group: one model load, frames sampled in batches across the
/// sprites, and `--timings` shows each stage with its count of runs.
#[test]
fn generate_batches_frames_across_sprites_and_shows_timings() {
    let dir = game();
    let lora = fixtures::family("sd1").join("lora_kohya.safetensors");
    std::fs::create_dir_all(dir.path().join("art")).unwrap();
    std::fs::copy(&lora, dir.path().join("art/style.safetensors")).unwrap();
    let model = fixtures::tiny_model("sd1");
    let generator = format!(
        "Diffusion(model: {:?}, steps: 3, guidance: 4.0, scheduler: Euler, resolution: (64, 64))",
        model.display().to_string()
    );
    std::fs::write(
        dir.path().join("sprites.ron"),
        format!(
            r#"(
    defaults: (size: (16, 16), palette: "db16", generator: {generator}),
    sprites: {{
        "knight": (prompt: "knight", seed: 1, frames: 2, loras: [(path: "art/style.safetensors", weight: 0.7)]),
        "slime":  (prompt: "slime", seed: 5, loras: [(path: "./art/style.safetensors", weight: 0.7)]),
        "coin":   (prompt: "coin", seed: 3, generator: Procedural),
    }},
)"#
        ),
    )
    .unwrap();
    let output = cli()
        .args(["generate", "--timings", "--manifest-path"])
        .arg(dir.path().join("Cargo.toml"))
        .env("PIXELGEN_BATCH", "2")
        .env("PIXELGEN_DEVICE", "cpu")
        .env("PIXELGEN_LOCK_DIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("3 sprites: 3 generated, 0 cached"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains("pixelgen timings"), "{stderr}");
    assert_eq!(timing_row(&stderr, "model load"), Some(1), "{stderr}");
    // 3 frames in batches of 2 → 2 batches, each 3 steps and one text encoding.
    assert_eq!(timing_row(&stderr, "text encoding"), Some(2), "{stderr}");
    assert_eq!(timing_row(&stderr, "unet steps"), Some(6), "{stderr}");
    assert_eq!(timing_row(&stderr, "vae decode"), Some(2), "{stderr}");
    assert_eq!(timing_row(&stderr, "procedural draw"), Some(1), "{stderr}");
    assert_eq!(timing_row(&stderr, "pixelize"), Some(4), "{stderr}");
    // Each frame's PNG, and each Diffusion frame's raw image.
    assert_eq!(timing_row(&stderr, "encode/write"), Some(7), "{stderr}");
    assert_eq!(timing_row(&stderr, "manifest"), Some(1), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.trim_start().starts_with("wall")),
        "{stderr}"
    );

    // Without --timings, no table.
    std::fs::write(
        dir.path().join("sprites.ron"),
        std::fs::read_to_string(dir.path().join("sprites.ron"))
            .unwrap()
            .replace("\"coin\", seed: 3", "\"coin\", seed: 4"),
    )
    .unwrap();
    let quiet = pixelgen(dir.path(), &["generate"]);
    assert!(quiet.status.success());
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("pixelgen timings"));
}

/// `cargo pixelgen check` refuses what `cargo build` would refuse, at once, naming the
/// line and column: hostile paths (a FIFO, a device) never make it wait.
#[cfg(unix)]
#[test]
fn check_refuses_what_the_build_cannot_use_without_hanging() {
    let dir = game();
    assert!(
        Command::new("mkfifo")
            .arg(dir.path().join("style.safetensors"))
            .status()
            .unwrap()
            .success()
    );
    let cases = [
        (
            r#"loras: [(path: "style.safetensors", weight: 1.0)]"#,
            "named pipe (FIFO)",
        ),
        (
            r#"loras: [(path: "/dev/zero", weight: 1.0)]"#,
            "character device",
        ),
        (r#"loras: [(path: "style.ckpt", weight: 1.0)]"#, "pickle"),
        (
            r#"size: (64, 64), atlas: "tiny""#,
            "does not fit a page of atlas `tiny`",
        ),
        (
            r#"generator: Diffusion(model: "m", resolution: (511, 513))"#,
            "resolution 511×513",
        ),
        (
            r#"generator: Diffusion(model: "m", guidance: NaN)"#,
            "guidance NaN",
        ),
    ];
    for (fields, words) in cases {
        let manifest = format!(
            "(atlases: {{ \"tiny\": (max_size: (32, 32)), \"main\": () }},\n sprites: {{\n  \"hero\": (prompt: \"knight\", {fields}) }})"
        );
        std::fs::write(dir.path().join("sprites.ron"), &manifest).unwrap();
        let mut child = cli()
            .args(["check", "--manifest-path"])
            .arg(dir.path().join("Cargo.toml"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("`check` still running after 30 s with {fields}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{fields}: accepted");
        assert!(stderr.contains(words), "{fields}: {stderr}");
        assert!(stderr.contains("sprites.ron:3:"), "{fields}: {stderr}");
        assert!(!stderr.contains("panicked"), "{fields}: {stderr}");
    }
}

/// A workspace of two game crates sharing one cache.
fn workspace() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("Cargo.toml"),
        "[workspace]\nmembers = [\"a\", \"b\"]\nresolver = \"2\"\n",
    )
    .unwrap();
    for (name, manifest) in [
        ("a", MANIFEST),
        (
            "b",
            "(defaults: (size: (16, 16)), sprites: { \"slime\": (prompt: \"green slime\", seed: 4) })",
        ),
    ] {
        let dir = root.path().join(name);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n"),
        )
        .unwrap();
        std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(dir.join("sprites.ron"), manifest).unwrap();
    }
    root
}

/// The cache's entries, drawn images (`raw/`) included, sorted.
fn entry_files(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut files = cache_entries(cache);
    files.extend(cache_entries(&cache.join("raw")));
    files.sort();
    files
}

#[test]
fn gc_removes_what_no_crate_of_the_workspace_uses_and_keeps_what_locks_name() {
    let root = workspace();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let cache = root.path().join("cache");
    for dir in [&a, &b] {
        assert!(pixelgen(dir, &["generate"]).status.success());
    }
    let before = entry_files(&cache);
    assert_eq!(before.len(), 5, "{before:?}"); // hero ×2, potion, coin, slime
    // The coin's old frame is orphaned once it is regenerated with another seed.
    std::fs::write(
        a.join("sprites.ron"),
        MANIFEST.replace("seed: 3", "seed: 30"),
    )
    .unwrap();
    assert!(pixelgen(&a, &["generate"]).status.success());
    assert_eq!(entry_files(&cache).len(), 6);
    // A raw image nothing plans, and a temporary file a killed run left.
    let raw = cache
        .join("raw/ab")
        .join(format!("ab{}.png", "0".repeat(62)));
    std::fs::create_dir_all(raw.parent().unwrap()).unwrap();
    std::fs::write(&raw, b"raw").unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let litter = cache.join(format!(".tmp-pixelgen-{dead}-x"));
    std::fs::write(&litter, b"half").unwrap();

    let dry = pixelgen(&a, &["gc", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    process::assert_success(&dry);
    assert!(
        text.contains("would remove 1 frame(s) and 1 raw image(s)"),
        "{text}"
    );
    assert!(text.contains("2 crate(s) use"), "{text}");
    assert_eq!(entry_files(&cache).len(), 7);
    assert!(litter.exists());

    let output = pixelgen(&a, &["gc"]);
    let text = String::from_utf8_lossy(&output.stdout);
    process::assert_success(&output);
    assert!(
        text.contains("removed 1 frame(s) and 1 raw image(s)"),
        "{text}"
    );
    assert!(text.contains("1 temporary file(s)"), "{text}");
    assert!(text.contains("kept 5 frame(s)"), "{text}");
    assert!(!raw.exists() && !litter.exists());
    assert_eq!(entry_files(&cache).len(), 5);
    // Both crates are still fresh: nothing either uses was touched.
    for dir in [&a, &b] {
        assert!(stale_names(&status_json(dir)).is_empty());
    }

    // The manifest changes but is not regenerated: the lock still names the coin's frame,
    // which stays (it is what a checkout builds from until it is regenerated).
    std::fs::write(
        a.join("sprites.ron"),
        MANIFEST.replace("seed: 3", "seed: 31"),
    )
    .unwrap();
    let output = pixelgen(&b, &["gc"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("removed 0 frame(s) and 0 raw image(s)"),
        "{text}"
    );
    assert_eq!(entry_files(&cache).len(), 5);
}

/// `kill -9` during `generate`, a few times at different moments: the next `generate`
/// leaves no temporary file in the cache, and every sprite ends fresh and intact.
#[cfg(unix)]
#[test]
fn generate_killed_midway_leaves_nothing_behind_after_the_next_run() {
    let dir = game();
    let sprites: String = (0..40)
        .map(|i| {
            format!("\"s{i}\": (prompt: \"slime {i}\", seed: {i}, size: (48, 48), frames: 3),\n")
        })
        .collect();
    std::fs::write(
        dir.path().join("sprites.ron"),
        format!("(defaults: (palette: \"db16\"), sprites: {{ {sprites} }})"),
    )
    .unwrap();
    for delay_ms in [60, 150, 250] {
        let mut child = cli()
            .args(["generate", "--no-server", "--manifest-path"])
            .arg(dir.path().join("Cargo.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    let output = pixelgen(dir.path(), &["generate", "--no-server"]);
    process::assert_success(&output);
    let cache = dir.path().join("cache");
    let mut leftovers = Vec::new();
    for folder in std::iter::once(cache.clone()).chain(
        std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.path()),
    ) {
        for entry in std::fs::read_dir(folder).unwrap().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-pixelgen-")
            {
                leftovers.push(entry.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(stale_names(&status_json(dir.path())).is_empty());
}

/// `watch`: an edited prompt becomes a fresh sprite and republished atlases within 2 s; a
/// half-typed manifest is reported and leaves the live atlases as they were.
#[test]
fn watch_turns_an_edited_prompt_into_fresh_live_atlases_within_2_s() {
    use std::time::{Duration, Instant};
    let dir = game();
    let mut child = cli()
        .args(["watch", "--manifest-path"])
        .arg(dir.path().join("Cargo.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    let first = wait_for_line(&stdout, "pixelgen watch: watching", Duration::from_secs(60));
    assert!(
        first.iter().any(|l| l.contains("3 sprites: 3 generated")),
        "{first:#?}"
    );
    let live_index = first
        .last()
        .and_then(|l| l.split("live atlases in ").nth(1))
        .map(|d| Path::new(d.split(';').next().unwrap()).join("pixelgen/index.json"))
        .unwrap();
    let stamp = |path: &Path| -> String {
        let index: serde_json::Value = read_json(path);
        index["stamp"].as_str().unwrap().to_owned()
    };
    let before = stamp(&live_index);

    let edited = MANIFEST.replace("gold coin", "silver coin");
    let saved = Instant::now();
    std::fs::write(dir.path().join("sprites.ron"), &edited).unwrap();
    let seen = wait_for_line(&stdout, "1 generated", Duration::from_secs(2));
    let latency = saved.elapsed();
    eprintln!("watch: prompt saved → regenerated and republished in {latency:?}");
    assert!(latency < Duration::from_secs(2), "{latency:?}: {seen:#?}");
    assert_ne!(
        stamp(&live_index),
        before,
        "the live atlases were republished"
    );
    assert!(stale_names(&status_json(dir.path())).is_empty());

    // Half typed: reported, and the live atlases stay.
    let republished = stamp(&live_index);
    std::fs::write(dir.path().join("sprites.ron"), &edited[..edited.len() / 2]).unwrap();
    wait_for_line(
        &stderr,
        "the live atlases stay as they were",
        Duration::from_secs(5),
    );
    assert_eq!(stamp(&live_index), republished);
    // Fixed again: back to work. The first atlases come back (polled: the line order of a
    // loaded machine says nothing about which save a summary belongs to).
    while stdout.try_recv().is_ok() {}
    std::fs::write(dir.path().join("sprites.ron"), MANIFEST).unwrap();
    wait_for_line(
        &stdout,
        "3 sprites: 0 generated, 3 cached",
        Duration::from_secs(5),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while stamp(&live_index) != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stamp(&live_index), before, "the first atlases again");
    child.kill().unwrap();
    child.wait().unwrap();
}
