//! Where a run's time went, stage by stage, for `cargo pixelgen generate --timings` and
//! `PIXELGEN_TIMINGS=1` in build scripts.
//!
//! Invariants: recording a time never changes what a stage computes (timings are
//! observations, never inputs to keys or pixels), and a stage's entry is the sum over every
//! time it ran, with a count, so batched and unbatched runs read the same way. Times of
//! stages that ran on other threads or in another process (the pixelize worker, a warm
//! server) are merged in, so stages can overlap and their sum can exceed the wall time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A named stage, in the order data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading and validating `sprites.ron` and `sprites.lock`.
    Manifest,
    /// Content hashes of model and LoRA files (read only when their stamp changed).
    Hash,
    /// Every frame's key.
    Plan,
    /// Looking up cached frames (stamp checks, corruption checks).
    CacheCheck,
    /// Training the manifest's stale `trained_loras`.
    Train,
    /// Loading a model: weights from disk to the device, LoRAs merged, modules built.
    Load,
    /// Tokenizing and running the text encoder(s).
    TextEncode,
    /// Denoising steps through the UNet (counted per step, all images of a batch at once).
    Unet,
    /// Latents to pixels through the VAE.
    VaeDecode,
    /// The procedural generator's drawing.
    Draw,
    /// Waiting for image servers (Server sprites): from the first request to the last
    /// image, less the pixelizing and writing done meanwhile.
    ImageServers,
    /// Raw image → finished sprite.
    Pixelize,
    /// PNG encoding and atomic writes into the cache.
    EncodeWrite,
    /// Packing atlases and writing the index (build scripts only).
    Emit,
}

impl Stage {
    pub const ALL: [Stage; 14] = [
        Stage::Manifest,
        Stage::Hash,
        Stage::Plan,
        Stage::CacheCheck,
        Stage::Train,
        Stage::Load,
        Stage::TextEncode,
        Stage::Unet,
        Stage::VaeDecode,
        Stage::Draw,
        Stage::ImageServers,
        Stage::Pixelize,
        Stage::EncodeWrite,
        Stage::Emit,
    ];

    /// The name shown in the table.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Manifest => "manifest",
            Stage::Hash => "hash",
            Stage::Plan => "plan",
            Stage::CacheCheck => "cache check",
            Stage::Train => "LoRA training",
            Stage::Load => "model load",
            Stage::TextEncode => "text encoding",
            Stage::Unet => "unet steps",
            Stage::VaeDecode => "vae decode",
            Stage::Draw => "procedural draw",
            Stage::ImageServers => "image servers",
            Stage::Pixelize => "pixelize",
            Stage::EncodeWrite => "encode/write",
            Stage::Emit => "atlases/index",
        }
    }
}

/// The total time and number of runs of one stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTime {
    #[serde(with = "nanos")]
    pub total: Duration,
    pub count: u64,
}

/// Durations as integer nanoseconds: exact, and plain for the warm server's protocol.
mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_nanos)
    }
}

/// Time per stage for one run (or one part of it, merged later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    stages: BTreeMap<Stage, StageTime>,
    /// Wall time of the whole run, when the caller measured it.
    #[serde(with = "nanos", default)]
    wall: Duration,
}

impl Timings {
    pub fn new() -> Self {
        Timings::default()
    }

    /// Adds one run of `stage` that took `elapsed`.
    pub fn add(&mut self, stage: Stage, elapsed: Duration) {
        self.add_runs(stage, elapsed, 1);
    }

    /// Adds `count` runs of `stage` that took `elapsed` together.
    pub fn add_runs(&mut self, stage: Stage, elapsed: Duration, count: u64) {
        let entry = self.stages.entry(stage).or_default();
        entry.total += elapsed;
        entry.count += count;
    }

    /// Runs `f` as one run of `stage`.
    pub fn time<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let value = f();
        self.add(stage, start.elapsed());
        value
    }

    /// Adds every stage of `other` (another thread's or process's share of the run).
    pub fn merge(&mut self, other: &Timings) {
        for (stage, time) in &other.stages {
            self.add_runs(*stage, time.total, time.count);
        }
    }

    pub fn get(&self, stage: Stage) -> StageTime {
        self.stages.get(&stage).copied().unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Records the wall time of the whole run (shown under the stages).
    pub fn set_wall(&mut self, wall: Duration) {
        self.wall = wall;
    }

    pub fn wall(&self) -> Duration {
        self.wall
    }
}

/// A table, one stage per line, in data-flow order; stages that did not run are left out:
///
/// ```text
/// pixelgen timings          total      runs   per run
///   manifest               1.2 ms         1    1.2 ms
///   unet steps            38.1 s         20    1.90 s
///   wall                  41.0 s
/// ```
/// The Diffusion backend reports its sampling phases as these stages.
#[cfg(feature = "diffusion")]
impl pixelgen_diffusion::PhaseTimes for Timings {
    fn record(&mut self, phase: pixelgen_diffusion::Phase, took: Duration) {
        use pixelgen_diffusion::Phase;
        let stage = match phase {
            Phase::TextEncode => Stage::TextEncode,
            Phase::UnetStep => Stage::Unet,
            Phase::VaeDecode => Stage::VaeDecode,
        };
        self.add(stage, took);
    }
}

impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pixelgen timings      {:>10}  {:>6}  {:>10}",
            "total", "runs", "per run"
        )?;
        for stage in Stage::ALL {
            let Some(time) = self.stages.get(&stage) else {
                continue;
            };
            let per_run = time.total / u32::try_from(time.count.max(1)).unwrap_or(u32::MAX);
            writeln!(
                f,
                "  {:<18} {:>10}  {:>6}  {:>10}",
                stage.label(),
                human(time.total),
                time.count,
                human(per_run)
            )?;
        }
        if !self.wall.is_zero() {
            writeln!(f, "  {:<18} {:>10}", "wall", human(self.wall))?;
        }
        Ok(())
    }
}

/// A duration with three significant digits and a unit that suits it.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 10.0 {
        format!("{s:.1} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_up_and_merge() {
        let mut main = Timings::new();
        main.add(Stage::Unet, Duration::from_millis(300));
        main.add(Stage::Unet, Duration::from_millis(500));
        let mut worker = Timings::new();
        worker.add_runs(Stage::Pixelize, Duration::from_millis(40), 4);
        worker.add(Stage::Unet, Duration::from_millis(200));
        main.merge(&worker);
        assert_eq!(
            main.get(Stage::Unet),
            StageTime {
                total: Duration::from_secs(1),
                count: 3
            }
        );
        assert_eq!(main.get(Stage::Pixelize).count, 4);
        assert_eq!(main.get(Stage::Load), StageTime::default());
    }

    #[test]
    fn the_table_lists_stages_that_ran_in_flow_order() {
        let mut t = Timings::new();
        t.add(Stage::EncodeWrite, Duration::from_micros(250));
        t.add_runs(Stage::Unet, Duration::from_secs(4), 2);
        t.add(Stage::Manifest, Duration::from_millis(12));
        t.set_wall(Duration::from_secs(5));
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[1].trim_start().starts_with("manifest"), "{text}");
        assert!(
            lines[2].contains("unet steps") && lines[2].contains("2.00 s"),
            "{text}"
        );
        assert!(
            lines[3].contains("encode/write") && lines[3].contains("250 µs"),
            "{text}"
        );
        assert!(
            lines[4].contains("wall") && lines[4].contains("5.00 s"),
            "{text}"
        );
        assert!(!text.contains("model load"));
    }

    #[test]
    fn timings_survive_json_exactly() {
        let mut t = Timings::new();
        t.add(Stage::Load, Duration::from_nanos(1_234_567_891));
        t.add(Stage::VaeDecode, Duration::from_nanos(7));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timings>(&json).unwrap(), t);
    }
}
