//! Server sprites drawn through ComfyUI's API, against a replay server that answers with
//! the shapes in `fixtures/comfyui/exchanges.json`: the failure paths a real ComfyUI does
//! not produce on demand (a rejected prompt, an execution error, an image of the wrong
//! size, a token). `tests/tests/comfyui.rs` runs a real ComfyUI. The replay server draws
//! each image from the seed it was sent (a flat colour), so frames differ; it is a
//! stand-in for ComfyUI's protocol, not for its pixels.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pixelgen_build::Environment;
use pixelgen_build::FileHasher;
use pixelgen_build::Quiet;
use pixelgen_build::{Project, Session};
use serde_json::{Value, json};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/comfyui")
        .join(name)
}

/// What the replay server saw and how it misbehaves.
#[derive(Default)]
struct Replay {
    /// (method, path with query, body) of every request.
    requests: Vec<(String, String, Value)>,
    /// The `Authorization` header of every request (empty when there was none).
    authorization: Vec<String>,
    /// Prompt id → the workflow it was sent.
    prompts: Vec<(String, Value)>,
    /// Polls of each prompt's history so far.
    polls: std::collections::HashMap<String, usize>,
    /// Seeds whose prompt fails in execution.
    failing_seeds: Vec<u64>,
    /// Seeds answered with an image of the wrong size.
    wrong_size_seeds: Vec<u64>,
}

fn fill(value: &Value, prompt_id: &str, filename: &str) -> Value {
    let text = value
        .to_string()
        .replace("{prompt_id}", prompt_id)
        .replace("{filename}", filename);
    serde_json::from_str(&text).unwrap()
}

/// Serves one request per connection, as ComfyUI would answer it.
fn serve(listener: TcpListener, replay: Arc<Mutex<Replay>>) {
    let exchanges: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("exchanges.json")).unwrap()).unwrap();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0;
        let mut authorization = String::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                } else if name.eq_ignore_ascii_case("authorization") {
                    authorization = value.trim().to_string();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut state = replay.lock().unwrap();
        state
            .requests
            .push((method.clone(), target.clone(), body.clone()));
        state.authorization.push(authorization);
        let (status, content_type, payload): (u16, &str, Vec<u8>) =
            match (method.as_str(), target.as_str()) {
                ("GET", "/queue") => (
                    200,
                    "application/json",
                    exchanges["queue_idle"].to_string().into_bytes(),
                ),
                ("POST", "/prompt") => {
                    let workflow = body["prompt"].clone();
                    if workflow["4"]["inputs"]["ckpt_name"] == "missing.safetensors" {
                        (
                            400,
                            "application/json",
                            exchanges["prompt_invalid"].to_string().into_bytes(),
                        )
                    } else {
                        let id = format!("00000000-0000-4000-8000-{:012}", state.prompts.len());
                        state.prompts.push((id.clone(), workflow));
                        (
                            200,
                            "application/json",
                            fill(&exchanges["prompt_accepted"], &id, "")
                                .to_string()
                                .into_bytes(),
                        )
                    }
                }
                ("GET", path) if path.starts_with("/history/") => {
                    let id = path.trim_start_matches("/history/").to_string();
                    let polls = {
                        let polls = state.polls.entry(id.clone()).or_default();
                        *polls += 1;
                        *polls
                    };
                    let seed = state
                        .prompts
                        .iter()
                        .find(|(p, _)| *p == id)
                        .map(|(_, w)| w["3"]["inputs"]["seed"].as_u64().unwrap());
                    let answer = match seed {
                        // Unfinished on the first poll, as a real queue would be.
                        _ if polls == 1 => exchanges["history_running"].clone(),
                        Some(seed) if state.failing_seeds.contains(&seed) => {
                            fill(&exchanges["history_error"], &id, "")
                        }
                        Some(seed) => fill(
                            &exchanges["history_success"],
                            &id,
                            &format!("ComfyUI_{seed:05}_.png"),
                        ),
                        None => json!({}),
                    };
                    (200, "application/json", answer.to_string().into_bytes())
                }
                ("GET", path) if path.starts_with("/view?") => {
                    let seed: u64 = path
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix("filename=ComfyUI_"))
                        .and_then(|rest| rest.split('_').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap();
                    let (width, height) = state
                        .prompts
                        .iter()
                        .find(|(_, w)| w["3"]["inputs"]["seed"] == seed)
                        .map(|(_, w)| {
                            (
                                w["5"]["inputs"]["width"].as_u64().unwrap() as u32,
                                w["5"]["inputs"]["height"].as_u64().unwrap() as u32,
                            )
                        })
                        .unwrap();
                    let side = if state.wrong_size_seeds.contains(&seed) {
                        (width / 2, height / 2)
                    } else {
                        (width, height)
                    };
                    let image = image::RgbImage::from_pixel(
                        side.0,
                        side.1,
                        image::Rgb([(seed * 37 % 256) as u8, (seed * 91 % 256) as u8, 200]),
                    );
                    let mut png = Vec::new();
                    image
                        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                        .unwrap();
                    (200, "image/png", png)
                }
                _ => (404, "text/plain", b"404: Not Found".to_vec()),
            };
        drop(state);
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&payload);
    }
}

fn start() -> (String, Arc<Mutex<Replay>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let replay = Arc::new(Mutex::new(Replay::default()));
    let shared = replay.clone();
    std::thread::spawn(move || serve(listener, shared));
    (url, replay)
}

fn game(url: &str, model: &str) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("workflow_api.json"),
        dir.path().join("workflow_api.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sprites.ron"),
        format!(
            r#"(
    defaults: (size: (16, 16), palette: "pico-8", negative_prompt: "blurry",
        generator: Server(kind: ComfyUI, url: "{url}", model: "{model}", steps: 6, guidance: 4.5, scheduler: "dpmpp_2m",
            resolution: (64, 48), workflow: "workflow_api.json",
            inputs: (prompt: "6", negative_prompt: "7", seed: "3", size: "5", model: "4", sampler: "3"))),
    sprites: {{
        "slime": (prompt: "green slime", seed: 10),
        "bat":   (prompt: "a bat", seed: 20, frames: 3),
    }},
)"#
        ),
    )
    .unwrap();
    let project = Project {
        manifest_path: dir.path().join("sprites.ron"),
        lock_path: dir.path().join("sprites.lock"),
        cache_dir: dir.path().join("cache"),
    };
    (dir, project)
}

/// The token the tests give the servers (through the environment, as a user would).
const TOKEN: &str = "s3cret-token";

fn build(project: &Project) -> Result<pixelgen_build::Summary, pixelgen_build::Error> {
    let environment = Environment::from_lookup(
        |name| (name == "PIXELGEN_IMAGE_SERVER_TOKEN").then(|| TOKEN.into()),
        std::env::temp_dir(),
    );
    let mut session = Session::open(
        project.clone(),
        FileHasher::in_memory(),
        &environment,
        false,
    )?;
    session.realize(false, &mut Quiet)
}

#[test]
fn comfyui_sprites_send_the_workflow_with_their_inputs_and_cache_what_comes_back() {
    let (url, replay) = start();
    let (dir, project) = game(&url, "pixel-art.safetensors");
    let summary = build(&project).unwrap();
    assert_eq!((summary.sprites, summary.generated), (2, 2));

    let state = replay.lock().unwrap();
    assert_eq!(state.prompts.len(), 4, "one prompt per frame");
    let mut seeds = BTreeSet::new();
    for (_, workflow) in &state.prompts {
        let inputs = |node: &str| &workflow[node]["inputs"];
        let seed = inputs("3")["seed"].as_u64().unwrap();
        seeds.insert(seed);
        let prompt = if seed == 10 { "green slime" } else { "a bat" };
        assert_eq!(inputs("6")["text"], prompt);
        assert_eq!(inputs("7")["text"], "blurry");
        assert_eq!(
            (
                inputs("5")["width"].as_u64(),
                inputs("5")["height"].as_u64()
            ),
            (Some(64), Some(48))
        );
        assert_eq!(inputs("4")["ckpt_name"], "pixel-art.safetensors");
        assert_eq!(
            (
                inputs("3")["steps"].as_u64(),
                inputs("3")["cfg"].as_f64(),
                inputs("3")["sampler_name"].as_str()
            ),
            (Some(6), Some(4.5), Some("dpmpp_2m"))
        );
        // Everything else is the user's workflow as written.
        assert_eq!(inputs("3")["scheduler"], "normal");
        assert_eq!(inputs("9")["filename_prefix"], "ComfyUI");
    }
    assert_eq!(
        seeds,
        BTreeSet::from([10, 20, 21, 22]),
        "frames use consecutive seeds"
    );
    assert!(
        state
            .requests
            .iter()
            .any(|(m, p, b)| m == "POST" && p == "/prompt" && b["client_id"] == "pixelgen")
    );
    assert!(state.requests.iter().any(|(_, p, _)| {
        p.starts_with("/view?filename=ComfyUI_00021_.png&subfolder=&type=output")
    }));
    assert!(
        state
            .authorization
            .iter()
            .all(|a| *a == format!("Bearer {TOKEN}")),
        "every request carries the token: {:?}",
        state.authorization
    );
    let requests = state.requests.len();
    drop(state);

    let lock = std::fs::read_to_string(&project.lock_path).unwrap();
    assert!(lock.contains("\"workflow:workflow_api.json\""), "{lock}");
    assert!(!lock.contains("127.0.0.1"), "{lock}");
    assert!(!lock.contains(TOKEN), "{lock}");

    // Nothing changed: no request at all (ComfyUI's identity is the workflow's bytes).
    let again = build(&project).unwrap();
    assert_eq!(again.generated, 0);
    assert_eq!(replay.lock().unwrap().requests.len(), requests);

    // An edited workflow redraws every sprite that uses it.
    let path = dir.path().join("workflow_api.json");
    let edited = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"normal\"", "\"karras\"");
    std::fs::write(&path, edited).unwrap();
    assert_eq!(build(&project).unwrap().generated, 2);
}

#[test]
fn comfyui_errors_fail_the_frames_with_comfyuis_words_and_keep_the_rest() {
    let (url, replay) = start();
    let (_dir, project) = game(&url, "pixel-art.safetensors");
    replay.lock().unwrap().failing_seeds = vec![21];
    replay.lock().unwrap().wrong_size_seeds = vec![10];
    let error = build(&project).unwrap_err().to_string();
    assert!(error.contains("2 frame(s) could not be drawn"), "{error}");
    assert!(!error.contains(TOKEN), "{error}");
    assert!(
        error.contains("bat#1") && error.contains("KSampler (3): CUDA out of memory"),
        "{error}"
    );
    assert!(
        error.contains("slime#0") && error.contains("sent a 32×24 image for a 64×48 request"),
        "{error}"
    );
    // The two frames that were drawn are cached: fixed, only the failed ones are redrawn.
    {
        let mut state = replay.lock().unwrap();
        state.failing_seeds.clear();
        state.wrong_size_seeds.clear();
        state.prompts.clear();
    }
    build(&project).unwrap();
    let seeds: BTreeSet<u64> = replay
        .lock()
        .unwrap()
        .prompts
        .iter()
        .map(|(_, w)| w["3"]["inputs"]["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, BTreeSet::from([10, 21]));

    // A workflow ComfyUI refuses (a model it does not have): its validation message.
    let (_dir, project) = game(&url, "missing.safetensors");
    let error = build(&project).unwrap_err().to_string();
    assert!(
        error.contains("Prompt outputs failed validation")
            && error.contains("ckpt_name: 'missing.safetensors' not in"),
        "{error}"
    );
}
