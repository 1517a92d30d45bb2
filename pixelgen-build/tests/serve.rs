//! The warm server (`generate::diffusion::warm::daemon`) and its client (`warm::client`)
//! with the tiny SD1 fixture model: the same cache bytes and lock file as in-process, a loaded model reused
//! across builds, the device lock, refusals, fallbacks and malformed input.
#![cfg(all(unix, feature = "diffusion"))]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pixelgen_build::FileHasher;
use pixelgen_build::Quiet;
use pixelgen_build::generate::diffusion::warm::WarmServer;
use pixelgen_build::generate::diffusion::warm::daemon::{ServeError, ServeOptions, Server};
use pixelgen_build::generate::diffusion::warm::protocol::{
    self, Request, RequestHeader, Response, StatusReply, Versions,
};
use pixelgen_build::{Project, Session, Summary};
use pixelgen_test_support::fixtures;
use pixelgen_test_support::fs::{contents, copy_dir};

const MANIFEST: &str = r#"(sprites: {
    "knight": (prompt: "knight", seed: 2, size: (16, 16), palette: "pico-8", frames: 2,
        generator: Diffusion(model: "model", steps: 2, guidance: 1.0, scheduler: Euler, resolution: (64, 64))),
    "slime": (prompt: "slime", negative_prompt: "blurry", seed: 5, size: (16, 16),
        generator: Diffusion(model: "model", steps: 2, guidance: 3.0, scheduler: EulerAncestral, resolution: (64, 64)),
        loras: [(path: "lora.safetensors", weight: 0.7)]),
    "coin": (prompt: "gold coin", seed: 1, size: (16, 16)),
})"#;

/// A game folder with the fixture model, a LoRA and `manifest`.
fn game(manifest: &str) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures::tiny_model("sd1"), &dir.path().join("model"));
    std::fs::copy(
        fixtures::family("sd1").join("lora_kohya.safetensors"),
        dir.path().join("lora.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.path().join("sprites.ron"), manifest).unwrap();
    let project = Project::for_crate(dir.path(), Some(dir.path().join("cache")), None).unwrap();
    (dir, project)
}

fn realize(project: &Project, server: Option<WarmServer>) -> Summary {
    Session::open(
        project.clone(),
        FileHasher::in_memory(),
        &pixelgen_build::Environment::default(),
        false,
    )
    .unwrap()
    .with_server(server)
    .realize(false, &mut Quiet)
    .unwrap()
}

/// What a build wrote: the cache's files and the lock file.
fn outputs(project: &Project) -> (BTreeMap<String, Vec<u8>>, Vec<u8>) {
    (
        contents(&project.cache_dir),
        std::fs::read(&project.lock_path).unwrap(),
    )
}

struct Running {
    socket: PathBuf,
    lock_dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(configure: impl FnOnce(&mut ServeOptions)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let lock_dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/serve.sock");
        let mut options = ServeOptions::new(socket.clone(), lock_dir.path().to_path_buf());
        configure(&mut options);
        let server = Server::bind(options).unwrap();
        let stop = server.stop_flag();
        let thread = std::thread::spawn(move || server.run().unwrap());
        Running {
            socket,
            lock_dir,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn address(&self) -> WarmServer {
        WarmServer::new(self.socket.clone(), true)
    }

    fn status(&self) -> StatusReply {
        pixelgen_build::generate::diffusion::warm::client::status(&self.socket, None).unwrap()
    }

    /// Whether another process could take the device lock now.
    fn device_is_free(&self) -> bool {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_dir.path().join("pixelgen-diffusion.lock"))
            .unwrap();
        file.try_lock().is_ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn through_the_server_a_build_writes_the_same_cache_and_lock_file() {
    let server = Running::start(|_| {});
    let (_a, warm) = game(MANIFEST);
    let (_b, cold) = game(MANIFEST);
    let summary = realize(&warm, Some(server.address()));
    assert_eq!(summary.generated, 3);
    assert!(summary.notes.is_empty(), "{:?}", summary.notes);
    let status = server.status();
    // Two groups (the LoRA makes a second model): each loaded once, drawn remotely.
    assert_eq!((status.loads, status.requests), (2, 3), "{status:?}");
    realize(&cold, None);
    let (warm_files, warm_lock) = outputs(&warm);
    let (cold_files, cold_lock) = outputs(&cold);
    assert_eq!(
        warm_files.keys().collect::<Vec<_>>(),
        cold_files.keys().collect::<Vec<_>>()
    );
    assert!(warm_files == cold_files, "cache bytes differ");
    assert_eq!(
        String::from_utf8(warm_lock).unwrap(),
        String::from_utf8(cold_lock).unwrap()
    );
}

/// Conditioned sprites (an init image with a mask, a ControlNet, a tile) drawn through
/// the server give the in-process cache bytes and lock file: the server reads the same
/// images and ControlNet, given absolute paths, and keeps the ControlNet between requests.
#[test]
fn conditioned_sprites_through_the_server_are_the_in_process_ones() {
    let manifest = r#"(sprites: {
        "fixed": (prompt: "knight", seed: 2, size: (16, 16),
            generator: Diffusion(model: "model", steps: 3, guidance: 3.0, scheduler: Euler, resolution: (64, 64)),
            init: (image: "art/base.png", mask: "art/mask.png", strength: 0.7)),
        "posed": (prompt: "knight", seed: 3, size: (16, 16), tiling: X,
            generator: Diffusion(model: "model", steps: 3, guidance: 3.0, scheduler: Euler, resolution: (64, 64)),
            controlnet: [(model: "controlnet", image: "art/pose.png", scale: 0.9, end: 0.7)]),
        "again": (prompt: "knight", seed: 4, size: (16, 16),
            generator: Diffusion(model: "model", steps: 3, guidance: 3.0, scheduler: Euler, resolution: (64, 64)),
            controlnet: [(model: "controlnet", image: "art/pose.png", scale: 0.5)]),
    })"#;
    let server = Running::start(|_| {});
    let (warm_dir, warm) = game(manifest);
    let (cold_dir, cold) = game(manifest);
    for dir in [warm_dir.path(), cold_dir.path()] {
        copy_dir(
            &fixtures::diffusion().join("conditioned/sd1-controlnet"),
            &dir.join("controlnet"),
        );
        std::fs::create_dir(dir.join("art")).unwrap();
        image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 90]))
            .save(dir.join("art/base.png"))
            .unwrap();
        image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]))
            .save(dir.join("art/mask.png"))
            .unwrap();
        image::RgbImage::from_fn(40, 40, |x, y| image::Rgb([if x == y { 255 } else { 0 }; 3]))
            .save(dir.join("art/pose.png"))
            .unwrap();
    }
    let summary = realize(&warm, Some(server.address()));
    assert_eq!(summary.generated, 3);
    assert!(summary.notes.is_empty(), "{:?}", summary.notes);
    let status = server.status();
    assert_eq!(status.requests, 3, "all drawn by the server");
    // Two groups use the ControlNet: the server read it once and kept it.
    assert_eq!(status.controlnet_loads, 1, "{status:?}");
    realize(&cold, None);
    let (warm_files, warm_lock) = outputs(&warm);
    let (cold_files, cold_lock) = outputs(&cold);
    assert!(warm_files == cold_files, "cache bytes differ");
    assert_eq!(warm_lock, cold_lock);
}

#[test]
fn a_prompt_edit_reuses_the_loaded_model_and_the_device_lock_follows_the_models() {
    let server = Running::start(|o| {
        o.max_models = 2;
        o.idle_timeout = Some(Duration::from_secs(2));
    });
    assert!(server.device_is_free(), "no model, no lock");
    let (_dir, project) = game(MANIFEST);
    realize(&project, Some(server.address()));
    assert!(
        !server.device_is_free(),
        "a server holding models holds the device"
    );
    assert_eq!(server.status().models.len(), 2);
    std::fs::write(
        &project.manifest_path,
        MANIFEST.replace("\"slime\", negative", "\"green slime\", negative"),
    )
    .unwrap();
    let summary = realize(&project, Some(server.address()));
    assert_eq!(summary.generated, 1);
    let status = server.status();
    assert_eq!(status.loads, 2, "the edit loaded nothing: {status:?}");
    assert_eq!(status.requests, 4);

    // Idle: the models go, and the device with them.
    let waited = Instant::now();
    while !server.device_is_free() {
        assert!(waited.elapsed() < Duration::from_secs(10), "never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.status().models.is_empty());
}

#[test]
fn max_models_keeps_the_most_recent_and_drops_the_rest() {
    let server = Running::start(|o| o.max_models = 1);
    let (_dir, project) = game(MANIFEST);
    realize(&project, Some(server.address()));
    let status = server.status();
    assert_eq!(status.models.len(), 1, "{status:?}");
    assert_eq!(status.loads, 2);
}

fn request_bytes(header: &serde_json::Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    protocol::write_frame(&mut bytes, header, &[]).unwrap();
    bytes
}

fn answer(socket: &Path, bytes: &[u8]) -> Response {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    protocol::read_frame::<Response>(&mut stream).unwrap().0
}

#[test]
fn a_client_of_another_version_is_refused_and_the_server_lets_go_of_the_device() {
    let server = Running::start(|_| {});
    let (_dir, project) = game(MANIFEST);
    realize(&project, Some(server.address()));
    assert!(!server.device_is_free());

    let mut versions = serde_json::to_value(Versions::ours()).unwrap();
    versions["diffusion"] = "pixelgen-diffusion-0".into();
    let header = serde_json::json!({
        "versions": versions,
        "request": { "type": "generate", "anything": "else" },
    });
    match answer(&server.socket, &request_bytes(&header)) {
        Response::Error { message } => assert!(
            message.contains("restart `cargo pixelgen serve`")
                && message.contains("pixelgen-diffusion-0"),
            "{message}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(server.device_is_free(), "a refused client draws in-process");
    assert!(server.status().models.is_empty());
}

#[test]
fn malformed_requests_get_an_error_and_never_hold_the_server() {
    let server = Running::start(|o| o.request_timeout = Duration::from_millis(300));
    let error = |bytes: &[u8]| match answer(&server.socket, bytes) {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    };
    // A length far beyond the limit.
    assert!(error(&u32::MAX.to_le_bytes()).contains("more than"));
    // Not JSON.
    let mut not_json = 5u32.to_le_bytes().to_vec();
    not_json.extend_from_slice(b"{{{{{");
    not_json.extend_from_slice(&0u32.to_le_bytes());
    assert!(error(&not_json).contains("malformed"));
    // JSON without versions, and the right versions with a nonsense request.
    assert!(error(&request_bytes(&serde_json::json!({"hello": 1}))).contains("no versions"));
    let nonsense = serde_json::json!({
        "versions": Versions::ours(),
        "request": { "type": "generate", "model": 7 },
    });
    assert!(error(&request_bytes(&nonsense)).contains("malformed"));
    // Half a frame, then silence: cut off after the request timeout.
    let started = Instant::now();
    assert!(error(&[10, 0, 0, 0, b'{']).contains("in time"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client that connects and leaves.
    drop(UnixStream::connect(&server.socket).unwrap());
    // Still serving.
    assert_eq!(server.status().versions, Versions::ours());
}

/// A server that answers every request with its status, from other generation code.
fn impostor(socket: &Path) -> JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if protocol::read_raw_frame(&mut stream).is_err() {
                return; // the test is over
            }
            let reply = Response::Status(StatusReply {
                versions: Versions {
                    diffusion: "pixelgen-diffusion-0".into(),
                    ..Versions::ours()
                },
                pid: 1,
                loads: 0,
                controlnet_loads: 0,
                requests: 0,
                models: Vec::new(),
                batch: Some(1),
                last_timings: pixelgen_build::Timings::new(),
            });
            let _ = protocol::write_frame(&mut stream, &reply, &[]);
        }
    })
}

#[test]
fn a_server_of_another_version_is_not_used_and_the_build_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("old.sock");
    let _thread = impostor(&socket);
    let (_a, through) = game(MANIFEST);
    let (_b, direct) = game(MANIFEST);
    let summary = realize(&through, Some(WarmServer::new(socket.clone(), false)));
    let note = summary
        .notes
        .iter()
        .find(|n| n.contains("warm server"))
        .unwrap_or_else(|| panic!("no note: {:?}", summary.notes));
    assert!(
        note.contains(&format!("the warm server at {} failed", socket.display()))
            && note.contains("restart `cargo pixelgen serve`")
            && note.ends_with("generated in-process"),
        "{note}"
    );
    assert_eq!(summary.generated, 3);
    realize(&direct, None);
    assert!(outputs(&through) == outputs(&direct));
}

#[test]
fn without_a_server_a_build_works_in_process_and_only_a_named_address_is_mentioned() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, project) = game(MANIFEST);
    let summary = realize(
        &project,
        Some(WarmServer::new(dir.path().join("none.sock"), false)),
    );
    assert_eq!((summary.generated, summary.notes.len()), (3, 0));
    let (_b, project) = game(MANIFEST);
    let summary = realize(
        &project,
        Some(WarmServer::new(dir.path().join("none.sock"), true)),
    );
    assert_eq!(summary.notes.len(), 1, "{:?}", summary.notes);
    assert!(
        summary.notes[0].contains("no warm server answers at"),
        "{:?}",
        summary.notes
    );
}

/// Passes connections through to `upstream`, except the `cut`th generate request, whose
/// connection it closes when the server has drawn the first image, before passing it on.
fn cutting_proxy(socket: &Path, upstream: PathBuf, cut: usize) -> JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut generates = 0;
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok((header, payload)) = protocol::read_raw_frame(&mut client) else {
                return;
            };
            let request: RequestHeader = serde_json::from_slice(&header).unwrap();
            let mut server = UnixStream::connect(&upstream).unwrap();
            let mut frame = (header.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&header);
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(&payload);
            server.write_all(&frame).unwrap();
            if matches!(request.request, Request::Generate(_)) {
                generates += 1;
                if generates == cut {
                    // The server is drawing; wait for its first image, then die.
                    let _ = protocol::read_raw_frame(&mut server);
                    drop(client);
                    continue;
                }
            }
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest);
            let _ = client.write_all(&rest);
        }
    })
}

#[test]
fn a_connection_lost_mid_request_falls_back_in_process_with_a_note_and_a_clean_cache() {
    let server = Running::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let proxy = dir.path().join("proxy.sock");
    let _thread = cutting_proxy(&proxy, server.socket.clone(), 2);
    let (_a, through) = game(MANIFEST);
    let (_b, direct) = game(MANIFEST);
    let summary = realize(&through, Some(WarmServer::new(proxy.clone(), false)));
    assert_eq!(summary.generated, 3);
    let note = summary
        .notes
        .iter()
        .find(|n| n.contains("warm server"))
        .unwrap_or_else(|| panic!("no note: {:?}", summary.notes));
    assert!(
        note.contains(&format!("the warm server at {} failed", proxy.display()))
            && note.contains("the connection broke after 0 of 1 images"),
        "{note}"
    );
    // The first request went through the server; the rest was drawn here.
    assert_eq!(server.status().requests, 2);
    realize(&direct, None);
    let (files, lock) = outputs(&through);
    let temporary: Vec<&String> = files
        .keys()
        .filter(|name| !name.ends_with(".png") && !name.ends_with(".gitignore"))
        .filter(|name| !name.ends_with(".pixelgen-lock"))
        .collect();
    assert!(temporary.is_empty(), "{temporary:?}");
    assert!((files, lock) == outputs(&direct));
}

#[test]
fn the_socket_is_owner_only_one_server_per_path_and_a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a/b/serve.sock");
    let lock_dir = dir.path().join("locks");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let options = ServeOptions::new(socket.clone(), lock_dir);
    let first = Server::bind(options.clone()).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&socket), 0o600);
    assert!(matches!(
        Server::bind(options.clone()),
        Err(ServeError::AlreadyRunning { .. })
    ));
    drop(first);
    assert!(!socket.exists(), "a stopped server removes its socket");

    // A killed server leaves its socket file behind; nobody answers on it.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let second = Server::bind(options.clone()).unwrap();
    assert_eq!(mode(&socket), 0o600);
    drop(second);

    std::fs::write(&socket, "not a socket").unwrap();
    let error = Server::bind(options).err().unwrap().to_string();
    assert!(error.contains("not a socket"), "{error}");
}
