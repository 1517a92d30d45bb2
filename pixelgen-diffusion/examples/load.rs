//! Loads a diffusers model folder on the CPU in f32 and reports how long it took, for
//! profiling the loader (`perf record -g target/release/examples/load MODEL`).
//!
//! `cargo run --release -p pixelgen-diffusion --example load -- MODEL_DIR [RUNS]`

use std::time::Instant;

use pixelgen_diffusion::candle_core::{DType, Device};
use pixelgen_diffusion::{LoadedModel, ModelLocation};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: load MODEL_DIR [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(1);
    let location = ModelLocation::Folder(dir.into());
    for run in 0..runs {
        let start = Instant::now();
        let model = LoadedModel::load(&location, &[], &Device::Cpu, DType::F32, None);
        let took = start.elapsed().as_secs_f64();
        match model {
            Ok(_) => println!("run {run}: loaded in {took:.2} s"),
            Err(e) => {
                eprintln!("cannot load: {e}");
                std::process::exit(1);
            }
        }
    }
}
