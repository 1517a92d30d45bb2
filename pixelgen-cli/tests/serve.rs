//! `cargo pixelgen serve` as a real process, with `cargo pixelgen generate` sending it the
//! tiny SD1 fixture model's frames: socket permissions, one server per socket, a model
//! loaded once across a prompt edit, the same bytes as in-process, SIGTERM, and a server
//! killed during a build.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pixelgen_test_support::fs::{contents, copy_dir, files};
use pixelgen_test_support::process::{self, KillOnDrop};
use pixelgen_test_support::{fixtures, game};

const MANIFEST: &str = r#"(sprites: {
    "knight": (prompt: "knight", seed: 2, size: (16, 16), palette: "pico-8", frames: 3,
        generator: Diffusion(model: "model", steps: 2, guidance: 1.0, scheduler: Euler, resolution: (64, 64))),
    "coin": (prompt: "gold coin", seed: 1, size: (16, 16)),
})"#;

fn game(manifest: &str) -> tempfile::TempDir {
    let dir = game::temp_crate("serve-game", manifest);
    copy_dir(&fixtures::tiny_model("sd1"), &dir.path().join("model"));
    dir
}

fn cli() -> Command {
    let mut command = process::cargo_pixelgen(env!("CARGO_BIN_EXE_cargo-pixelgen"));
    command.env("PIXELGEN_DEVICE", "cpu");
    command
}

/// `generate` with `server_args`; in-process work takes the device lock in `lock_dir`.
fn generate(game: &Path, server_args: &[&str], lock_dir: &Path) -> Output {
    cli()
        .arg("generate")
        .args(server_args)
        .arg("--manifest-path")
        .arg(game.join("Cargo.toml"))
        .env("PIXELGEN_LOCK_DIR", lock_dir)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The cache's files and the lock file.
fn outputs(game: &Path) -> (BTreeMap<String, Vec<u8>>, Vec<u8>) {
    (
        contents(&game.join("cache")),
        std::fs::read(game.join("sprites.lock")).unwrap(),
    )
}

/// A `cargo pixelgen serve` child process with its own socket folder and device lock.
struct Serve {
    child: KillOnDrop,
    socket: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/serve.sock");
        let log = dir.path().join("serve.log");
        std::fs::create_dir_all(dir.path().join("lock")).unwrap();
        let child = cli()
            .args(["serve", "--idle-timeout", "0", "--socket"])
            .arg(&socket)
            .env("PIXELGEN_LOCK_DIR", dir.path().join("lock"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut serve = Serve {
            child: KillOnDrop(child),
            socket,
            log,
            dir,
        };
        let up = process::wait_for_file(&serve.socket, &mut serve.child, Duration::from_secs(60));
        if let Err(e) = up {
            panic!("serve: {e}: {}", serve.log());
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> serde_json::Value {
        let output = cli()
            .args(["serve", "--status", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        process::assert_success(&output);
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn server_args(&self) -> [&str; 2] {
        ["--server", self.socket.to_str().unwrap()]
    }
}

#[test]
fn serve_keeps_the_model_across_a_prompt_edit_and_writes_what_in_process_writes() {
    let mut serve = Serve::start();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&serve.dir.path().join("run")), 0o700);
    assert_eq!(mode(&serve.socket), 0o600);

    let second = cli()
        .args(["serve", "--socket"])
        .arg(&serve.socket)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("already running"),
        "{}",
        text(&second.stderr)
    );

    let warm = game(MANIFEST);
    let cold = game(MANIFEST);
    let lock_dir = tempfile::tempdir().unwrap();
    let edited = MANIFEST.replace("prompt: \"knight\"", "prompt: \"knight in red armour\"");
    for (step, manifest) in [MANIFEST, edited.as_str()].into_iter().enumerate() {
        std::fs::write(warm.path().join("sprites.ron"), manifest).unwrap();
        std::fs::write(cold.path().join("sprites.ron"), manifest).unwrap();
        let through = generate(warm.path(), &serve.server_args(), lock_dir.path());
        process::assert_success(&through);
        let summary = if step == 0 {
            "pixelgen: 2 sprites: 2 generated, 0 cached"
        } else {
            "pixelgen: 2 sprites: 1 generated, 1 cached"
        };
        assert!(
            text(&through.stdout).contains(summary),
            "{}",
            text(&through.stdout)
        );
        assert!(
            !text(&through.stderr).contains("warm server"),
            "{}",
            text(&through.stderr)
        );
        let status = serve.status();
        assert_eq!(status["loads"], 1, "{status}");
        assert_eq!(status["requests"], 3 * (step + 1), "{status}");
        let direct = generate(cold.path(), &["--no-server"], lock_dir.path());
        process::assert_success(&direct);
        assert!(
            outputs(warm.path()) == outputs(cold.path()),
            "the cache or lock file differs after step {step}"
        );
    }

    // SIGTERM: the socket goes, the process ends cleanly.
    let killed = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = serve.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", serve.log());
    assert!(!serve.socket.exists(), "{}", serve.log());
}

#[test]
fn a_server_killed_during_a_build_leaves_a_clean_cache_and_the_build_finishes_in_process() {
    let manifest = MANIFEST
        .replace("frames: 3", "frames: 6")
        .replace("steps: 2", "steps: 8")
        .replace("(64, 64)", "(128, 128)");
    let serve = Serve::start();
    let warm = game(&manifest);
    let lock_dir = tempfile::tempdir().unwrap();
    let mut build = cli()
        .arg("generate")
        .args(serve.server_args())
        .arg("--manifest-path")
        .arg(warm.path().join("Cargo.toml"))
        .env("PIXELGEN_LOCK_DIR", lock_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first image is in the cache: the server is drawing the second.
    let raw = warm.path().join("cache/raw");
    let started = Instant::now();
    let count = |dir: &Path| -> usize {
        files(dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .count()
    };
    while count(&raw) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "nothing drawn"
        );
        assert!(build.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    let server_pid = serve.child.id();
    let killed = Command::new("kill")
        .args(["-KILL", &server_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = build.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pixelgen: the warm server at {} failed (",
            serve.socket.display()
        )) && stderr.contains("); generated in-process"),
        "{stderr}"
    );
    eprintln!("the build said: {stderr}");

    let cold = game(&manifest);
    let direct = generate(cold.path(), &["--no-server"], lock_dir.path());
    process::assert_success(&direct);
    let (files, lock) = outputs(warm.path());
    let stray: Vec<&String> = files
        .keys()
        .filter(|n| !n.ends_with(".png") && *n != ".gitignore" && *n != ".pixelgen-lock")
        .collect();
    assert!(stray.is_empty(), "temporary or partial files: {stray:?}");
    assert!((files, lock) == outputs(cold.path()));
}
