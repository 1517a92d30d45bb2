//! `Build`: the small builder a game's build.rs calls.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::environment::Environment;
use crate::error::Error;
use crate::index::OUT_SUBDIR;
use crate::key::FileHasher;
use crate::pipeline::{Project, Quiet, Session, Summary};
use crate::timings::Stage;

/// Runs the pipeline for the crate whose build script calls it.
///
/// Environment (read once by [`Environment::read`]; every variable it reads is declared
/// with `rerun-if-env-changed`, so changing one runs the build script again):
/// - `PIXELGEN_OFFLINE=1` (or `CI=true`): never generate; a stale sprite fails the build
///   with the list of stale sprites and the command that fixes it.
/// - `PIXELGEN_CACHE_DIR`: the sprite cache folder (default: `cache/` at the workspace root).
/// - `PIXELGEN_SERVER`: the socket of a warm `cargo pixelgen serve` to send Diffusion
///   frames to (default: `$XDG_RUNTIME_DIR/pixelgen/serve.sock`, else
///   `<temp>/pixelgen-<uid>/serve.sock`), or `off`. Without a server there, generation
///   runs in-process; the results are the same.
/// - `RAYON_NUM_THREADS`: CPU threads for Stable Diffusion (default: physical cores);
///   set once here if unset, see [`crate::generate::settle_cpu_threads`].
/// - `PIXELGEN_TIMINGS=1`: print where the build script's time went, stage by stage, as
///   cargo warnings (cargo shows them after the build).
/// - `PIXELGEN_DEVICE`, `PIXELGEN_DTYPE`, `PIXELGEN_BATCH`, `PIXELGEN_LOCK_DIR`: where and
///   how Stable Diffusion runs; `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HOME`,
///   `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`: where models named by Hugging Face id
///   are found and downloaded from.
#[derive(Debug, Clone, Default)]
pub struct Build {
    crate_dir: Option<PathBuf>,
    out_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    offline: Option<bool>,
    timings: Option<bool>,
}

impl Build {
    pub fn new() -> Self {
        Build::default()
    }

    /// The crate folder holding `sprites.ron` (default: `CARGO_MANIFEST_DIR`).
    pub fn crate_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.crate_dir = Some(dir.into());
        self
    }

    /// Where atlases and the index go (default: `OUT_DIR`).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// The sprite cache folder (default: `PIXELGEN_CACHE_DIR`, else `cache/` at the workspace root).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Force offline (or online) mode instead of reading `PIXELGEN_OFFLINE` / `CI`.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = Some(offline);
        self
    }

    /// Print the per-stage timings (or not) instead of reading `PIXELGEN_TIMINGS`.
    pub fn timings(mut self, timings: bool) -> Self {
        self.timings = Some(timings);
        self
    }

    /// Runs the build, prints the summary line as a cargo warning and returns the counts.
    pub fn run(self) -> Result<Summary, Error> {
        let started = Instant::now();
        // SAFETY: a build script calls `run` from its main thread, which is the only one
        // then (pixelgen starts its own threads later, and cargo runs each build script
        // as its own process).
        unsafe { crate::generate::settle_cpu_threads() };
        for name in crate::environment::VARIABLES {
            println!("cargo:rerun-if-env-changed={name}");
        }
        let environment = Environment::read();
        let crate_dir = match self.crate_dir {
            Some(dir) => dir,
            None => required(&environment.cargo_manifest_dir, "CARGO_MANIFEST_DIR")?,
        };
        let out_dir = match self.out_dir {
            Some(dir) => dir,
            None => required(&environment.out_dir, "OUT_DIR")?,
        };
        let offline = self.offline.unwrap_or(environment.offline);
        let show_timings = self.timings.unwrap_or(environment.timings);
        let state_dir = out_dir.join(OUT_SUBDIR);
        let project =
            Project::discover(&crate_dir, self.cache_dir, &environment, Some(&state_dir))?;
        println!("cargo:rerun-if-changed={}", project.manifest_path.display());
        println!("cargo:rerun-if-changed={}", project.lock_path.display());

        let hasher = FileHasher::persistent(state_dir.join("file-stamps.json"));
        let session = Session::open(project, hasher, &environment, offline)?;
        #[cfg(unix)]
        let session =
            session.with_server(crate::generate::diffusion::warm::server_for(&environment));
        let mut session = session;
        for path in &session.plan.input_files {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        // Cargo scans a folder (a trained LoRA's images) for any change inside it.
        for path in session
            .plan
            .lora_inputs()
            .into_iter()
            .filter(|p| p.exists())
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        // A model's files are part of its sprites' keys: a changed model reruns the build.
        let manifest_dir = session.project.manifest_dir();
        let models = session.plan.local_models();
        for model in models {
            if let Ok(location) = crate::generate::diffusion::model_files::locate(
                model,
                manifest_dir,
                environment.hub.cache_dir.as_deref(),
            ) {
                for path in location.content_files() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
        let summary = session.realize(offline, &mut Quiet)?;
        let emitting = Instant::now();
        let index = crate::emit::emit(&session, &out_dir)?;
        // The same atlases where a running game (and `cargo pixelgen watch`) look for them.
        crate::emit::publish(&index, &session.project.live_dir())?;
        session.timings.add(Stage::Emit, emitting.elapsed());
        // cargo replays a build script's warnings while it is fresh: after a run that
        // generated, make the next build run again, so that its line says what it did.
        let marker = state_dir.join("generated");
        if summary.generated > 0 || !marker.exists() {
            write_marker(&marker)?;
        }
        println!("cargo:rerun-if-changed={}", marker.display());
        println!("cargo:warning={summary}");
        for note in &summary.notes {
            println!("cargo:warning={note}");
        }
        if show_timings {
            session.timings.set_wall(started.elapsed());
            for line in session.timings.to_string().lines() {
                println!("cargo:warning={line}");
            }
        }
        if env!("PIXELGEN_BUILD_OPT_LEVEL") == "0" {
            println!(
                "cargo:warning=pixelgen: pixelgen-build runs unoptimised, which makes generation many times slower: add `[profile.dev.build-override] opt-level = 3` to the workspace Cargo.toml"
            );
        }
        Ok(summary)
    }

    /// `run`, and on error print it and exit with status 1: cargo then shows the message.
    pub fn run_or_exit(self) {
        if let Err(error) = self.run() {
            eprintln!("{error}");
            std::process::exit(1);
        }
    }
}

fn write_marker(marker: &Path) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::cache::write_atomically(marker, now.as_nanos().to_string().as_bytes()).map_err(
        |source| Error::Cache {
            path: marker.to_path_buf(),
            source,
        },
    )
}

fn required(value: &Option<PathBuf>, name: &str) -> Result<PathBuf, Error> {
    value.clone().ok_or_else(|| {
        Error::Environment(format!(
            "{name} is not set: pixelgen_build::Build::run is meant to be called from a build script (build.rs), where cargo sets it"
        ))
    })
}
