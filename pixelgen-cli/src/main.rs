//! `cargo pixelgen`: see the state of a crate's sprites and generate them with progress.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod game;
mod mcp;
mod pack;
mod pixelize;
#[cfg(unix)]
mod serve;
mod train_lora;
mod txt2img;
mod watch;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use pixelgen_build::FileHasher;
use pixelgen_build::Progress;
use pixelgen_build::{Environment, Error, FrameId, Project, Session};
use pixelgen_build::{Freshness, SpriteStatus};

/// cargo runs `cargo-pixelgen pixelgen ARGS`; the extra word is accepted and dropped.
#[derive(Parser)]
#[command(
    name = "cargo-pixelgen",
    bin_name = "cargo pixelgen",
    version,
    about = "Pixel-art sprites for Bevy, generated at build time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show each sprite: fresh, or stale and why.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON: [{ "name", "status": "fresh"|"stale", "reasons": [...], "frames" }].
        #[arg(long)]
        json: bool,
    },
    /// Exit 1 with the list of stale sprites when anything is stale (for CI).
    Check {
        #[command(flatten)]
        target: Target,
    },
    /// Generate every stale sprite into the cache and update sprites.lock, with progress.
    Generate {
        #[command(flatten)]
        target: Target,
        /// Print where the time went, stage by stage (also: PIXELGEN_TIMINGS=1).
        #[arg(long)]
        timings: bool,
        /// Send Stable Diffusion frames to the `cargo pixelgen serve` at this socket
        /// (default: PIXELGEN_SERVER, else the default socket; in-process when none answers)
        #[arg(long, value_name = "PATH", conflicts_with = "no_server")]
        server: Option<PathBuf>,
        /// Never use a warm server: draw in-process
        #[arg(long)]
        no_server: bool,
    },
    /// Remove cache entries no sprite uses any more (of every crate of the workspace that
    /// shares the cache; never what a sprites.lock names), and temporary files of killed runs.
    Gc {
        #[command(flatten)]
        target: Target,
        /// List what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve the crate's sprites to an AI assistant over MCP (stdio): list, read, edit,
    /// generate, preview; reload and screenshot a running dev build of the game (BRP).
    Mcp {
        #[command(flatten)]
        target: Target,
        /// The port the running game answers the Bevy Remote Protocol on (127.0.0.1).
        #[arg(long, value_name = "PORT", default_value_t = game::DEFAULT_PORT)]
        game_port: u16,
    },
    /// Regenerate and republish the atlases whenever sprites.ron, a palette or a LoRA
    /// changes, for a running game to reload (live atlases in the cache's live/ folder).
    Watch(watch::Watch),
    /// Keep Stable Diffusion models loaded between builds: builds and `generate` send
    /// their frames here while it runs.
    #[cfg(unix)]
    Serve(serve::Serve),
    /// Pack a folder of PNGs into an atlas and TexturePacker JSON (hash), as the build packs.
    Pack(pack::Pack),
    /// Turn one raw image (pseudo pixel art) into exact-size pixel art, as the build does.
    Pixelize(pixelize::Pixelize),
    /// Train a style LoRA on a folder of images (kohya-ss format out), on the CPU or CUDA.
    TrainLora(train_lora::TrainLora),
    /// Draw one raw image with Stable Diffusion (a model folder, .safetensors file or HF id).
    Txt2img(Box<txt2img::Txt2Img>),
}

#[derive(clap::Args)]
struct Target {
    /// The game crate's Cargo.toml (or its sprites.ron, or its folder). Default: ./Cargo.toml
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<PathBuf>,
}

fn main() -> ExitCode {
    // SAFETY: the first thing `main` does, before any other thread exists.
    unsafe { pixelgen_build::generate::settle_cpu_threads() };
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("pixelgen") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    // The only place the CLI reads the environment.
    let environment = Environment::read();
    match run(cli, &environment) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, environment: &Environment) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Status { target, json } => {
            let mut session = open(&target, environment, true)?;
            let statuses = session.status();
            if json {
                print_json(&statuses)?;
            } else {
                print_table(&statuses);
                print_lora_table(&session.lora_statuses());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { target } => {
            let statuses = open(&target, environment, true)?.status();
            let stale: Vec<&SpriteStatus> = statuses
                .iter()
                .filter(|s| s.status == Freshness::Stale)
                .collect();
            if stale.is_empty() {
                println!("pixelgen: all {} sprites are fresh", statuses.len());
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "pixelgen: {} of {} sprites are stale:",
                stale.len(),
                statuses.len()
            );
            for sprite in stale {
                println!("  - {}: {}", sprite.name, sprite.reasons.join("; "));
            }
            println!(
                "help: run `cargo pixelgen generate{}` and commit sprites.lock and cache/",
                manifest_arg(&target)
            );
            Ok(ExitCode::from(1))
        }
        Command::Gc { target, dry_run } => {
            let crate_dir = crate_dir(target.manifest_path.as_deref());
            let project = Project::discover(&crate_dir, None, environment, None)?;
            let users =
                pixelgen_build::gc::cache_users(&crate_dir, &project.cache_dir, environment)?;
            let report =
                pixelgen_build::gc::collect(&project.cache_dir, &users, environment, dry_run)?;
            print_gc(&report, &project.cache_dir, users.len(), dry_run);
            Ok(ExitCode::SUCCESS)
        }
        Command::Mcp { target, game_port } => {
            mcp::run(
                crate_dir(target.manifest_path.as_deref()),
                environment,
                game::Game { port: game_port },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch(args) => {
            let crate_dir = crate_dir(args.manifest_path.as_deref());
            watch::run(args, &crate_dir, environment)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pack(args) => match pack::run(args) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Pixelize(args) => match pixelize::run(args) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::from(1))
            }
        },
        Command::TrainLora(args) => match train_lora::run(args, environment) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Txt2img(args) => match txt2img::run(*args, environment) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::from(1))
            }
        },
        #[cfg(unix)]
        Command::Serve(args) => match serve::run(args, environment) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Generate {
            target,
            timings,
            server,
            no_server,
        } => {
            let started = Instant::now();
            let show_timings = timings || environment.timings;
            let session = open(&target, environment, false)?;
            #[cfg(unix)]
            let session = session.with_server(if no_server {
                None
            } else {
                match server {
                    Some(path) => Some(pixelgen_build::generate::diffusion::warm::WarmServer::new(
                        path, true,
                    )),
                    None => pixelgen_build::generate::diffusion::warm::server_for(environment),
                }
            });
            #[cfg(not(unix))]
            let _ = (server, no_server);
            let mut session = session;
            let mut bar = Bar::default();
            let summary = session.realize(false, &mut bar)?;
            if let Some(bar) = bar.bar {
                bar.finish_and_clear();
            }
            println!("{summary}");
            for note in &summary.notes {
                eprintln!("{note}");
            }
            if show_timings {
                session.timings.set_wall(started.elapsed());
                eprint!("{}", session.timings);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open(target: &Target, environment: &Environment, offline: bool) -> Result<Session, Error> {
    let crate_dir = crate_dir(target.manifest_path.as_deref());
    let project = Project::discover(&crate_dir, None, environment, None)?;
    open_project(project, environment, offline)
}

/// A session of `project` with the CLI's own (path, size, mtime) stamps, apart from any
/// build's OUT_DIR, so that commands (and each `watch` rebuild, each MCP call) do not
/// read unchanged LoRA and model files again.
pub(crate) fn open_project(
    project: Project,
    environment: &Environment,
    offline: bool,
) -> Result<Session, Error> {
    let tag = path_tag(project.manifest_dir());
    let state = environment
        .temp_dir
        .join(format!("pixelgen-cli-stamps-{tag}.json"));
    Session::open(project, FileHasher::persistent(state), environment, offline)
}

/// [`open_project`] for generating online, with Diffusion frames going to the warm server
/// when one runs (in-process otherwise): what `watch` and the MCP server's `generate` do.
pub(crate) fn open_to_generate(
    project: Project,
    environment: &Environment,
) -> Result<Session, Error> {
    let session = open_project(project, environment, false)?;
    #[cfg(unix)]
    let session = session.with_server(pixelgen_build::generate::diffusion::warm::server_for(
        environment,
    ));
    Ok(session)
}

/// A file-name-safe tag for a folder (no hashing crate needed for this).
fn path_tag(dir: &Path) -> String {
    dir.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `--manifest-path` may name Cargo.toml, sprites.ron, or the crate folder.
fn crate_dir(manifest_path: Option<&Path>) -> PathBuf {
    let path = manifest_path.map_or_else(|| PathBuf::from("Cargo.toml"), Path::to_path_buf);
    let dir = if path.is_dir() {
        path
    } else {
        path.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

fn manifest_arg(target: &Target) -> String {
    target
        .manifest_path
        .as_ref()
        .map(|p| format!(" --manifest-path {}", p.display()))
        .unwrap_or_default()
}

fn print_json(statuses: &[SpriteStatus]) -> Result<(), Error> {
    let text =
        serde_json::to_string_pretty(statuses).map_err(|e| Error::Environment(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn print_table(statuses: &[SpriteStatus]) {
    let width = statuses
        .iter()
        .map(|s| s.name.as_str().len())
        .max()
        .unwrap_or(0);
    for sprite in statuses {
        match sprite.status {
            Freshness::Fresh => println!("{:width$}  fresh", sprite.name),
            Freshness::Stale => println!(
                "{:width$}  stale: {}",
                sprite.name,
                sprite.reasons.join("; ")
            ),
        }
    }
    let stale = statuses
        .iter()
        .filter(|s| s.status == Freshness::Stale)
        .count();
    println!(
        "{} sprites: {} fresh, {} stale",
        statuses.len(),
        statuses.len() - stale,
        stale
    );
}

/// The trained LoRAs under the sprites' table: a stale one is trained by the next
/// generating run that draws a sprite using it.
fn print_lora_table(loras: &[pixelgen_build::LoraStatus]) {
    for lora in loras {
        let users: Vec<&str> = lora.used_by.iter().map(|s| s.as_str()).collect();
        match lora.status {
            Freshness::Fresh => println!(
                "trained LoRA {} ({}): fresh; used by {}",
                lora.name,
                lora.images,
                users.join(", ")
            ),
            Freshness::Stale => println!(
                "trained LoRA {} ({}): to train: {}; used by {}",
                lora.name,
                lora.images,
                lora.reasons.join("; "),
                users.join(", ")
            ),
        }
    }
}

fn print_gc(report: &pixelgen_build::gc::GcReport, cache: &Path, users: usize, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "pixelgen gc: {verb} {} frame(s) and {} raw image(s) no sprite uses, {} temporary file(s): {} freed; kept {} frame(s) and {} raw image(s) ({} crate(s) use {})",
        report.frames.len(),
        report.raw.len(),
        report.litter.len(),
        human_bytes(report.freed_bytes()),
        report.kept_frames,
        report.kept_raw,
        users,
        cache.display()
    );
    if !report.loras.is_empty() || report.kept_loras > 0 {
        println!(
            "pixelgen gc: {verb} {} trained LoRA(s) no lock or manifest names; kept {}",
            report.loras.len(),
            report.kept_loras
        );
    }
    const SHOWN: usize = 50;
    let removed: Vec<&(PathBuf, u64)> = report
        .frames
        .iter()
        .chain(&report.raw)
        .chain(&report.loras)
        .chain(&report.litter)
        .collect();
    for (path, size) in removed.iter().take(SHOWN) {
        println!("  - {} ({})", path.display(), human_bytes(*size));
    }
    if removed.len() > SHOWN {
        println!("  … and {} more", removed.len() - SHOWN);
    }
    for reason in &report.unplanned {
        println!("note: raw images kept: a manifest could not be planned: {reason}");
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

/// A progress bar with ETA, drawn only when there is something to generate. Frames drawn
/// on image servers are counted per server in its message.
#[derive(Default)]
struct Bar {
    bar: Option<ProgressBar>,
    per_server: std::collections::BTreeMap<String, usize>,
    last_server: Option<String>,
}

impl Progress for Bar {
    fn start(&mut self, frames: usize) {
        if frames == 0 {
            return;
        }
        let bar = ProgressBar::new(frames as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} frames  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }

    fn server_frame_done(&mut self, server: &str) {
        *self.per_server.entry(server.to_string()).or_default() += 1;
        self.last_server = Some(server.to_string());
    }

    fn frame_done(&mut self, frame: &FrameId) {
        if let Some(bar) = &self.bar {
            let servers: Vec<String> = self
                .per_server
                .iter()
                .map(|(server, count)| format!("{server}: {count}"))
                .collect();
            match self.last_server.take() {
                Some(_) => bar.set_message(format!("{frame}  [{}]", servers.join(" · "))),
                None => bar.set_message(frame.to_string()),
            }
            bar.inc(1);
        }
    }

    /// Training comes before the frames that need it: its own bar, replaced by the
    /// frames' bar when it is done.
    fn training(&mut self, lora: &pixelgen_build::LoraName, done: usize, steps: usize, loss: f32) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} training steps  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        bar.set_length(steps as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("LoRA {lora}, loss {loss:.4}"));
        if done >= steps {
            bar.finish_and_clear();
            self.bar = None;
        }
    }
}
