//! A real InvokeAI server for the tests: started on a free loopback port in its own
//! temporary root, the tiny SD1 fixture model (and a LoRA) installed through its model
//! manager, killed when dropped.
//!
//! InvokeAI comes from a venv (`.ci/run` installs `invokeai==6.14.2` into
//! `target/invokeai-venv`; `PIXELGEN_INVOKEAI_WEB` may name another `invokeai-web`).
//! Without one, the tests that need it say so and pass, unless
//! `PIXELGEN_REQUIRE_INVOKEAI` is set (CI sets it), where they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pixelgen_test_support::process::KillOnDrop;
use pixelgen_test_support::{fixtures, net};
use serde_json::{Value, json};

/// The name the tests' manifests give the model.
pub const MODEL: &str = "tiny-sd1";

/// A running InvokeAI, killed when dropped.
pub struct InvokeAi {
    child: Option<KillOnDrop>,
    pub port: u16,
    root: tempfile::TempDir,
}

/// The `invokeai-web` to run: `PIXELGEN_INVOKEAI_WEB`, else the CI venv's. `None` when
/// there is none and the caller may skip (panics when `PIXELGEN_REQUIRE_INVOKEAI` is set).
pub fn executable() -> Option<PathBuf> {
    let candidate = std::env::var_os("PIXELGEN_INVOKEAI_WEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::target_dir().join("invokeai-venv/bin/invokeai-web"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let message = format!(
        "InvokeAI is not installed ({} is missing): `python3 -m venv target/invokeai-venv && target/invokeai-venv/bin/pip install invokeai==6.14.2`, or run .ci/run",
        candidate.display()
    );
    if std::env::var_os("PIXELGEN_REQUIRE_INVOKEAI").is_some() {
        panic!("{message}");
    }
    eprintln!("skipped: {message}");
    None
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout_read(Duration::from_secs(60))
        .build()
}

impl InvokeAi {
    /// Starts InvokeAI (not waiting for it: see [`InvokeAi::ready`]).
    pub fn start(executable: &Path) -> InvokeAi {
        let root = tempfile::Builder::new()
            .prefix("pixelgen-invokeai-")
            .tempdir()
            .expect("temp root");
        let port = net::free_port();
        std::fs::write(
            root.path().join("invokeai.yaml"),
            format!(
                "schema_version: 4.0.3\nhost: 127.0.0.1\nport: {port}\ndevice: cpu\nprecision: float32\n"
            ),
        )
        .expect("invokeai.yaml");
        let log = std::fs::File::create(root.path().join("server.log")).expect("log");
        let child = Command::new(executable)
            .arg("--root")
            .arg(root.path())
            // One core each: two servers on one machine then behave like two machines
            // (torch's default, a thread per core in each, makes them fight over all cores).
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start invokeai-web");
        InvokeAi {
            child: Some(KillOnDrop(child)),
            port,
            root,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn get(&self, path: &str) -> Value {
        agent()
            .get(&format!("{}{path}", self.url()))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
            .into_json()
            .expect("JSON")
    }

    fn send(&self, method: &str, path: &str, body: Value) -> Value {
        agent()
            .request(method, &format!("{}{path}", self.url()))
            .send_json(body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
            .into_json()
            .expect("JSON")
    }

    /// Waits until it answers, then installs the tiny SD1 model as [`MODEL`] and each of
    /// `loras` (files) as SD1 LoRAs. The probe cannot classify random tiny models, so
    /// their configuration is set by hand.
    pub fn ready(&mut self, model_dir: &Path, loras: &[&Path]) {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("invokeai-web exited ({status}):\n{}", self.log());
            }
            let up = agent()
                .get(&format!("{}/api/v1/app/version", self.url()))
                .call()
                .is_ok();
            if up {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "InvokeAI did not start in 300 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        self.install_main(model_dir, MODEL, "sd-1");
        for (index, lora) in loras.iter().enumerate() {
            let key = self.install(lora);
            self.send(
                "PATCH",
                &format!("/api/v2/models/i/{key}"),
                json!({"name": format!("lora-{index}"), "base": "sd-1", "type": "lora", "format": "lycoris"}),
            );
        }
    }

    /// Installs a diffusers folder as the main model `name` of base `base` (`sd-1`, `sdxl`).
    pub fn install_main(&self, model_dir: &Path, name: &str, base: &str) {
        let key = self.install(model_dir);
        self.send(
            "PATCH",
            &format!("/api/v2/models/i/{key}"),
            json!({"name": name, "base": base, "type": "main", "format": "diffusers", "variant": "normal", "prediction_type": "epsilon"}),
        );
    }

    /// Installs a diffusers-layout ControlNet folder as the ControlNet `name` of base `base`.
    pub fn install_controlnet(&self, dir: &Path, name: &str, base: &str) {
        let key = self.install(dir);
        self.send(
            "PATCH",
            &format!("/api/v2/models/i/{key}"),
            json!({"name": name, "base": base, "type": "controlnet", "format": "diffusers"}),
        );
    }

    /// Installs a file or folder in place; returns the model's key.
    fn install(&self, source: &Path) -> String {
        let job = agent()
            .post(&format!("{}/api/v2/models/install", self.url()))
            .query("source", &source.display().to_string())
            .query("inplace", "true")
            .send_json(json!({}))
            .unwrap_or_else(|e| panic!("install {}: {e}\n{}", source.display(), self.log()))
            .into_json::<Value>()
            .expect("JSON");
        let id = job["id"].as_u64().expect("an install job id");
        let start = Instant::now();
        loop {
            let job = self.get(&format!("/api/v2/models/install/{id}"));
            match job["status"].as_str() {
                Some("completed") => {
                    return job["config_out"]["key"]
                        .as_str()
                        .expect("a key")
                        .to_string();
                }
                Some("error") => panic!("installing {} failed: {job}", source.display()),
                _ => {}
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "install timed out: {job}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// This server's finished queue items from pixelgen: (prompt, seed) of each.
    pub fn drawn(&self) -> Vec<(String, u64)> {
        let items = self.get("/api/v1/queue/default/list_all");
        items
            .as_array()
            .into_iter()
            .flatten()
            .filter(|item| item["origin"] == "pixelgen" && item["status"] == "completed")
            .map(|item| {
                let value = |node: &str, field: &str| {
                    item["field_values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|v| v["node_path"] == node && v["field_name"] == field)
                        .map(|v| v["value"].clone())
                        .unwrap_or(Value::Null)
                };
                (
                    value("positive", "prompt")
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    value("noise", "seed").as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    /// Kills the server at once (as a crash would).
    pub fn kill(&mut self) {
        drop(self.child.take());
    }
}
