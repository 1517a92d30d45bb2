//! Stable Diffusion at real SD1.5 size on the CPU: pixelgen (candle) against diffusers
//! (PyTorch) on the same random weights, the same inputs, the same machine, in one run.
//! Prints a markdown table with both times and their ratio (pixelgen / diffusers).
//!
//! `cargo bench -p pixelgen-build --bench diffusion`
//!
//! - The model is SD1.5's architecture (UNet [320,640,1280,1280], VAE [128,256,512,512],
//!   CLIP-L text encoder) with seeded random weights, made once by `diffusers_peer.py` into
//!   `target/bench-sd15/` (about 2 GB, fp16 files, loaded as f32 by both sides).
//! - UNet step: batch 2 (classifier-free guidance), 4×64×64 latents, timestep 500,
//!   context 2×77×768. Whole image: 512×512, 4 Euler steps, guidance 7.5, from the same
//!   initial latents on both sides; the two images are compared as a parity check.
//! - Both sides use the same number of threads: candle's default (one per core), passed
//!   to `torch.set_num_threads`.
//!
//! - The conditioned modes (`common/modes.rs`), each a whole image from the same latents:
//!   img2img at strength 0.5, inpainting with a mask, one SD1.5-size ControlNet, tiling on
//!   both axes; a second table gives their times, steps run, cost against text to image and
//!   parity with diffusers. `PIXELGEN_BENCH_MODES=0` leaves them out.
//!
//! Environment: `PIXELGEN_BENCH_PYTHON` (default `/work/venv/bin/python`, with torch,
//! diffusers, transformers and safetensors), `PIXELGEN_BENCH_RUNS` (timed UNet steps after
//! one warm-up, default 3), `PIXELGEN_BENCH_IMAGE_RUNS` (whole images, default 1),
//! `PIXELGEN_BENCH_MAX_LOAD` (wait until the 1-minute load average is below this before
//! measuring, default 1.5; at most `PIXELGEN_BENCH_MAX_WAIT_S`, default 1800 s).
//!
//! Without Python or diffusers the bench still measures pixelgen, on the cached model if
//! there is one, else on a model with candle's own random init in `target/bench-sd15-candle/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use pixelgen_build::generate::diffusion::Scheduler;
use pixelgen_build::generate::diffusion::noise::{Stream, gaussian};
use pixelgen_build::generate::diffusion::{LoadedModel, ModelLocation, Noise, Request, Settings};
use pixelgen_test_support::bench::{self, env_or, median};
use pixelgen_test_support::{fixtures, images};
use serde_json::Value;

// The SD1.5-architecture fallback model, shared with pixelgen-cli's `serve` bench.
#[path = "common/sd15.rs"]
mod sd15;

// img2img, inpainting, ControlNet and tiling, each beside diffusers.
#[path = "common/modes.rs"]
mod modes;

// What both sides compute; `diffusers_peer.py` has the same constants.
const PROMPT: &str = "pixel art knight";
const SIZE: usize = 512;
const STEPS: usize = 4;
const GUIDANCE: f64 = 7.5;
const TIMESTEP: f64 = 500.0;
const LATENT: usize = SIZE / 8;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

fn load_average() -> f64 {
    bench::load_average().unwrap_or(0.0)
}

/// The machine is shared with other builds: measure only once it is quiet, or say it was not.
fn wait_for_quiet(max_load: f64, max_wait: Duration) -> bool {
    let start = Instant::now();
    let mut said = false;
    loop {
        let load = load_average();
        if load < max_load {
            return true;
        }
        if start.elapsed() >= max_wait {
            eprintln!(
                "bench: load average still {load:.2} after {:.0} s; measuring anyway",
                max_wait.as_secs_f64()
            );
            return false;
        }
        if !said {
            eprintln!(
                "bench: waiting for the 1-minute load average ({load:.2}) to fall below {max_load}"
            );
            said = true;
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---------------------------------------------------------------------------------------
// The diffusers peer, a Python subprocess.
// ---------------------------------------------------------------------------------------

struct Peer {
    python: PathBuf,
    script: PathBuf,
}

impl Peer {
    /// Runs `diffusers_peer.py ARGS` and returns its last stdout line as JSON; on failure,
    /// the reason in one line (the last line of its error output).
    fn run(&self, args: &[&str]) -> Result<Value, String> {
        let output = Command::new(&self.python)
            .arg(&self.script)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", self.python.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no error output");
            return Err(format!(
                "`{} {}` failed ({}): {last}",
                self.script
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy(),
                args.join(" "),
                output.status
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
        last.and_then(|l| serde_json::from_str(l).ok())
            .ok_or_else(|| format!("no JSON result from `{}`", args.join(" ")))
    }
}

// ---------------------------------------------------------------------------------------
// The model and inputs.
// ---------------------------------------------------------------------------------------

/// What both sides are given.
struct Inputs {
    /// The image's initial latents, unit variance, 4×64×64.
    latents: Vec<f32>,
    /// One UNet step's input: 2×4×64×64 latents and 2×77×768 text context.
    sample: Tensor,
    context: Tensor,
}

impl Inputs {
    /// The inputs `diffusers_peer.py prepare` wrote.
    fn read(path: &Path) -> Inputs {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).expect("inputs file");
        let take = |name: &str| {
            tensors
                .get(name)
                .unwrap_or_else(|| panic!("{}: no tensor `{name}`", path.display()))
                .to_dtype(DType::F32)
                .expect("f32")
        };
        Inputs {
            latents: take("latents")
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("latents"),
            sample: take("sample"),
            context: take("context"),
        }
    }

    /// Inputs from pixelgen's seeded noise, when there is no peer to share them with.
    fn generated() -> Inputs {
        let tensor = |stream, shape: &[usize]| {
            let count = shape.iter().product();
            Tensor::from_vec(gaussian(7, stream, count), shape, &Device::Cpu).expect("tensor")
        };
        Inputs {
            latents: gaussian(0, Stream::InitialLatents, 4 * LATENT * LATENT),
            sample: tensor(Stream::AncestralStep(0), &[2, 4, LATENT, LATENT]),
            context: tensor(Stream::AncestralStep(1), &[2, 77, 768]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// pixelgen's side.
// ---------------------------------------------------------------------------------------

struct Measured {
    load: f64,
    steps: Vec<f64>,
    images: Vec<f64>,
    peak_rss: Option<u64>,
}

fn measure_pixelgen(
    model_dir: &Path,
    inputs: &Inputs,
    runs: usize,
    image_runs: usize,
    run_dir: &Path,
) -> (Measured, Tensor, LoadedModel) {
    let start = Instant::now();
    let model = LoadedModel::load(
        &ModelLocation::Folder(model_dir.to_path_buf()),
        &[],
        &Device::Cpu,
        DType::F32,
        None,
    )
    .expect("pixelgen loads the model");
    let load = seconds(start.elapsed());

    let mut steps = Vec::new();
    let mut output = None;
    for i in 0..=runs {
        let start = Instant::now();
        let out = model
            .unet()
            .forward(&inputs.sample, TIMESTEP, &inputs.context, None)
            .expect("UNet step");
        let elapsed = seconds(start.elapsed());
        // The first call is the warm-up (allocator, first touch of the weights).
        if i > 0 {
            steps.push(elapsed);
        }
        output = Some(out);
    }

    let settings = Settings::new(SIZE, SIZE, STEPS, GUIDANCE, Scheduler::Euler);
    let request = Request {
        prompt: PROMPT.into(),
        negative_prompt: None,
        noise: Noise::Given {
            latents: inputs.latents.clone(),
            steps: None,
            seed: 0,
        },
        init: None,
        control_images: Vec::new(),
    };
    let mut images = Vec::new();
    for _ in 0..image_runs {
        let start = Instant::now();
        let image = model
            .generate(&settings, std::slice::from_ref(&request))
            .expect("whole image")
            .remove(0);
        images.push(seconds(start.elapsed()));
        image
            .save(run_dir.join("pixelgen.png"))
            .expect("save pixelgen.png");
    }
    let measured = Measured {
        load,
        steps,
        images,
        peak_rss: peak_rss(),
    };
    (measured, output.expect("at least one UNet step"), model)
}

fn measured_from_peer(result: &Value) -> Option<Measured> {
    let list = |key: &str| -> Option<Vec<f64>> {
        result
            .get(key)?
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect()
    };
    Some(Measured {
        load: result.get("load_seconds")?.as_f64()?,
        steps: list("step_seconds")?,
        images: list("image_seconds")?,
        peak_rss: result.get("peak_rss_bytes").and_then(Value::as_u64),
    })
}

// ---------------------------------------------------------------------------------------
// Parity.
// ---------------------------------------------------------------------------------------

/// Mean and largest absolute difference of two same-sized images, in 0..=255 units.
fn image_difference(a: &Path, b: &Path) -> Result<(f64, u8), String> {
    let (a, b) = (images::open(a)?.to_rgb8(), images::open(b)?.to_rgb8());
    if a.dimensions() != b.dimensions() {
        return Err(format!(
            "sizes differ: {:?} and {:?}",
            a.dimensions(),
            b.dimensions()
        ));
    }
    Ok(images::difference(&a, &b))
}

/// Largest and mean absolute difference of the two UNet outputs, and the mean magnitude of
/// diffusers' output for scale.
fn tensor_difference(ours: &Tensor, path: &Path) -> Result<(f32, f32, f32), String> {
    let err = |e: candle_core::Error| e.to_string();
    let theirs = candle_core::safetensors::load(path, &Device::Cpu).map_err(err)?;
    let theirs = theirs
        .get("output")
        .ok_or("no tensor `output`")?
        .to_dtype(DType::F32)
        .map_err(err)?;
    let diff = (ours - &theirs).map_err(err)?.abs().map_err(err)?;
    let scalar = |t: Tensor| t.to_scalar::<f32>().map_err(err);
    Ok((
        scalar(diff.flatten_all().map_err(err)?.max(0).map_err(err)?)?,
        scalar(diff.mean_all().map_err(err)?)?,
        scalar(theirs.abs().map_err(err)?.mean_all().map_err(err)?)?,
    ))
}

/// One line of the table: both values and their ratio; a dash where one is missing.
fn print_row(label: &str, ours: Option<f64>, theirs: Option<f64>, show: impl Fn(f64) -> String) {
    let ratio = match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    };
    let cell = |v: Option<f64>| v.map(&show).unwrap_or_else(|| "—".into());
    println!("| {label} | {} | {} | {ratio} |", cell(ours), cell(theirs));
}

/// Mean and standard deviation of an image's values in 0..=1: a NaN in the model comes
/// out as a flat image, so this says the picture is real.
fn image_stats(path: &Path) -> Result<(f64, f64), String> {
    let image = images::open(path)?.to_rgb8();
    let values: Vec<f64> = image
        .as_raw()
        .iter()
        .map(|&v| f64::from(v) / 255.0)
        .collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Ok((mean, variance.sqrt()))
}

/// The second table: each conditioned mode's time beside diffusers', against text to image
/// on the same side, with the steps each ran and the two images' difference.
fn print_modes(
    ours: &Measured,
    theirs: Option<&Measured>,
    our_modes: &Result<Vec<modes::ModeRun>, String>,
    their_modes: &Result<Value, String>,
    run_dir: &Path,
) {
    let our_runs = match our_modes {
        Ok(runs) => runs,
        Err(reason) => {
            println!("- conditioned modes: skipped: {reason}");
            return;
        }
    };
    let our_base = min(&ours.images);
    // diffusers' own text-to-image run in its modes process, else its `bench` run's.
    let their_base = their_modes
        .as_ref()
        .ok()
        .and_then(|r| {
            r.get("modes")?
                .get("txt2img")?
                .get("seconds")?
                .as_array()
                .cloned()
        })
        .map(|v| v.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .map(|v| min(&v))
        .or(theirs.map(|m| min(&m.images)));
    println!();
    println!(
        "| conditioned, 512×512, {STEPS} Euler steps, guidance {GUIDANCE} | UNet calls (pixelgen / diffusers) | pixelgen | × its txt2img | diffusers | × its txt2img | pixelgen / diffusers | images differ by (mean, largest) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let their_runs = their_modes.as_ref().ok();
    let dash = || "—".to_string();
    for run in our_runs {
        let their = their_runs.and_then(|r| r.get("modes")?.get(run.mode));
        let their_seconds = their
            .and_then(|t| t.get("seconds")?.as_array().cloned())
            .map(|v| v.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .map(|v| min(&v));
        let their_calls = their.and_then(|t| t.get("unet_calls")?.as_u64());
        // diffusers calls the UNet once per step (the guidance batch is one call).
        let calls = match their_calls {
            Some(c) => format!("{} / {c}", run.steps),
            None => format!("{} / —", run.steps),
        };
        let parity = match image_difference(
            &run.image,
            &run_dir.join(format!("diffusers_{}.png", run.mode)),
        ) {
            Ok((mean, largest)) if their_seconds.is_some() => {
                format!("{mean:.3}/255, {largest}/255")
            }
            _ => dash(),
        };
        println!(
            "| {} | {calls} | {:.2} s | {:.2} | {} | {} | {} | {parity} |",
            modes::label(run.mode),
            run.seconds,
            run.seconds / our_base,
            their_seconds.map_or_else(dash, |s| format!("{s:.2} s")),
            their_seconds
                .zip(their_base)
                .map_or_else(dash, |(s, b)| format!("{:.2}", s / b)),
            their_seconds.map_or_else(dash, |s| format!("{:.2}", run.seconds / s)),
        );
    }
    match their_modes {
        Ok(result) => println!(
            "- conditioned modes: one run each unless PIXELGEN_BENCH_IMAGE_RUNS says more; \"× its txt2img\" divides by pixelgen's whole image above and by diffusers' text-to-image run in its modes process (run first, same latents); diffusers' peak RSS in its modes run {}",
            result
                .get("peak_rss_bytes")
                .and_then(Value::as_u64)
                .map_or_else(dash, |b| gib(b as f64))
        ),
        Err(reason) => println!("- conditioned modes, diffusers: skipped: {reason}"),
    }
}

// ---------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runs = env_or("PIXELGEN_BENCH_RUNS", 3usize).max(1);
    let image_runs = env_or("PIXELGEN_BENCH_IMAGE_RUNS", 1usize).max(1);
    let max_load = env_or("PIXELGEN_BENCH_MAX_LOAD", 1.5f64);
    let max_wait = Duration::from_secs(env_or("PIXELGEN_BENCH_MAX_WAIT_S", 1800u64));
    let threads = candle_core::utils::get_num_threads();
    let root = fixtures::target_dir().join("bench-sd15");
    let run_dir = root.join("run");
    std::fs::create_dir_all(&run_dir).expect("run folder");
    // Outputs of an earlier run must not be mistaken for this one's.
    for stale in [
        "pixelgen.png",
        "diffusers.png",
        "diffusers.json",
        "diffusers_unet_output.safetensors",
    ] {
        let _ = std::fs::remove_file(run_dir.join(stale));
    }

    let peer = Peer {
        python: std::env::var_os("PIXELGEN_BENCH_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/work/venv/bin/python".into()),
        script: manifest_dir().join("benches/diffusers_peer.py"),
    };
    // The peer makes the shared model (once; later runs find it cached).
    let peer_versions = peer.run(&["check"]).and_then(|versions| {
        eprintln!("bench: preparing the model in {} (once)", root.display());
        peer.run(&["prepare", &root.to_string_lossy()])?;
        if env_or("PIXELGEN_BENCH_MODES", 1u8) != 0 {
            peer.run(&["prepare-modes", &root.to_string_lossy()])?;
        }
        Ok(versions)
    });
    let shared_model = root.join("model/bench-stamp.json").is_file();
    let (model_dir, inputs, weights) = if shared_model {
        (
            root.join("model"),
            Inputs::read(&root.join("inputs.safetensors")),
            "seeded random (diffusers_peer.py), fp16 files",
        )
    } else {
        let dir = fixtures::target_dir().join("bench-sd15-candle");
        sd15::make_candle_model(&dir, &fixtures::tiny_model("sd1").join("tokenizer"));
        (
            dir,
            Inputs::generated(),
            "candle's default random init (no peer to make shared ones), fp16 files",
        )
    };

    let quiet = wait_for_quiet(max_load, max_wait);
    let load_before = load_average();
    eprintln!("bench: pixelgen ({threads} threads)");
    let (ours, our_output, model) =
        measure_pixelgen(&model_dir, &inputs, runs, image_runs, &run_dir);
    let with_modes = env_or("PIXELGEN_BENCH_MODES", 1u8) != 0;
    let mode_inputs = root.join("modes");
    let our_modes = if !with_modes {
        Err("PIXELGEN_BENCH_MODES=0".to_string())
    } else if !mode_inputs.join("stamp.json").is_file() {
        Err(format!(
            "no inputs in {} (made by `diffusers_peer.py prepare-modes`)",
            mode_inputs.display()
        ))
    } else {
        eprintln!("bench: pixelgen, conditioned modes");
        let settings = Settings::new(SIZE, SIZE, STEPS, GUIDANCE, Scheduler::Euler);
        modes::measure(
            &model,
            &settings,
            PROMPT,
            &inputs.latents,
            &mode_inputs,
            image_runs,
            &run_dir,
        )
    };
    drop(model);
    let load_between = load_average();

    let theirs = peer_versions.and_then(|versions| {
        eprintln!("bench: diffusers ({threads} threads)");
        let out = run_dir.join("diffusers.json");
        let result = peer.run(&[
            "bench",
            &root.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
            "--threads",
            &threads.to_string(),
            "--runs",
            &runs.to_string(),
            "--image-runs",
            &image_runs.to_string(),
        ])?;
        let measured = measured_from_peer(&result).ok_or("malformed result from the peer")?;
        Ok((versions, result, measured))
    });
    let their_modes = match (&theirs, &our_modes) {
        (Ok(_), Ok(_)) => {
            eprintln!("bench: diffusers, conditioned modes");
            let out = run_dir.join("diffusers_modes.json");
            peer.run(&[
                "modes",
                &root.to_string_lossy(),
                "--out",
                &out.to_string_lossy(),
                "--threads",
                &threads.to_string(),
                "--image-runs",
                &image_runs.to_string(),
            ])
        }
        (Err(reason), _) | (_, Err(reason)) => Err(reason.clone()),
    };
    let load_after = load_average();

    // The table.
    let step_label = format!(
        "UNet step: batch 2 × 4×64×64, t={TIMESTEP}, context 2×77×768 (median of {runs}, after 1 warm-up)"
    );
    let image_label = format!(
        "whole image: 512×512, {STEPS} Euler steps, guidance {GUIDANCE} (text encoder, {STEPS} UNet calls on batch 2, VAE decode; {})",
        if image_runs == 1 {
            "1 run".to_string()
        } else {
            format!("best of {image_runs}")
        }
    );
    let their = theirs.as_ref().ok().map(|(_, _, m)| m);
    let time = |s: f64| format!("{s:.2} s");
    println!();
    println!(
        "| SD1.5 on the CPU, f32 | pixelgen (candle) | diffusers (PyTorch) | pixelgen / diffusers |"
    );
    println!("|---|---:|---:|---:|");
    print_row(
        &step_label,
        Some(median(ours.steps.clone())),
        their.map(|m| median(m.steps.clone())),
        time,
    );
    print_row(
        &image_label,
        Some(min(&ours.images)),
        their.map(|m| min(&m.images)),
        time,
    );
    print_row(
        "model load (fp16 safetensors → f32), not in the times above",
        Some(ours.load),
        their.map(|m| m.load),
        time,
    );
    print_row(
        "peak RSS of the process (load, steps, images)",
        ours.peak_rss.map(|b| b as f64),
        their.and_then(|m| m.peak_rss).map(|b| b as f64),
        gib,
    );

    let peer_ran = theirs.is_ok();
    let loads = if peer_ran {
        format!(
            "{load_before:.2} before pixelgen, {load_between:.2} before diffusers, {load_after:.2} at the end"
        )
    } else {
        format!("{load_before:.2} before pixelgen, {load_after:.2} at the end")
    };
    println!();
    println!(
        "- machine: {}, {} cores; 1-minute load average {loads}{}",
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quiet {
            String::new()
        } else {
            format!(" (did not fall below {max_load}: numbers may be inflated)")
        }
    );
    println!(
        "- threads: pixelgen {threads} (candle's default, one per core; AVX {}, F16C {}, MKL {}), diffusers {}",
        candle_core::utils::with_avx(),
        candle_core::utils::with_f16c(),
        candle_core::utils::has_mkl(),
        match &theirs {
            Ok((_, result, _)) => format!(
                "{} (torch.set_num_threads)",
                result.get("threads").and_then(Value::as_u64).unwrap_or(0)
            ),
            Err(_) => "—".into(),
        }
    );
    println!(
        "- dtype: f32{}; weights: {weights}",
        if peer_ran { " on both sides" } else { "" }
    );
    println!(
        "- samples (s): pixelgen steps {:.2?}, images {:.2?}{}",
        ours.steps,
        ours.images,
        match &theirs {
            Ok((_, _, m)) => format!("; diffusers steps {:.2?}, images {:.2?}", m.steps, m.images),
            Err(_) => String::new(),
        }
    );
    let finite = our_output
        .abs()
        .and_then(|t| t.mean_all())
        .and_then(|t| t.to_scalar::<f32>())
        .map_or(f32::NAN, |v| v);
    match image_stats(&run_dir.join("pixelgen.png")) {
        Ok((mean, std)) => println!(
            "- sanity: pixelgen's image has mean {mean:.3}, std {std:.3} (0..1); its UNet step output mean |x| {finite:.3}{}",
            if std < 0.03 || !finite.is_finite() {
                " — degenerate (NaN or flat): check the weights"
            } else {
                ""
            }
        ),
        Err(e) => println!("- sanity: {e}"),
    }
    match &theirs {
        Ok((versions, result, _)) => {
            let field = |v: &Value, key: &str| {
                v.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            println!(
                "- peer: Python {}, torch {}, diffusers {}, transformers {}; attention: {}",
                field(versions, "python"),
                field(versions, "torch"),
                field(versions, "diffusers"),
                field(versions, "transformers"),
                field(result, "attention_processor"),
            );
            match image_difference(
                &run_dir.join("pixelgen.png"),
                &run_dir.join("diffusers.png"),
            ) {
                Ok((mean, largest)) => println!(
                    "- parity, whole image: mean absolute pixel difference {mean:.3}/255 (largest {largest}/255)"
                ),
                Err(e) => println!("- parity, whole image: not compared ({e})"),
            }
            match tensor_difference(
                &our_output,
                &run_dir.join("diffusers_unet_output.safetensors"),
            ) {
                Ok((largest, mean, scale)) => println!(
                    "- parity, UNet step output: mean absolute difference {mean:.2e}, largest {largest:.2e} (mean |output| {scale:.3})"
                ),
                Err(e) => println!("- parity, UNet step output: not compared ({e})"),
            }
        }
        Err(reason) => println!("- diffusers: skipped: {reason}"),
    }
    print_modes(&ours, their, &our_modes, &their_modes, &run_dir);
    println!(
        "- images: {} ({})",
        run_dir.display(),
        if peer_ran {
            "pixelgen.png, diffusers.png"
        } else {
            "pixelgen.png"
        }
    );
}
