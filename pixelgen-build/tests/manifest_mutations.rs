//! Hostile manifests: random mutations of valid ones (bytes, tokens, numbers at the edges of
//! their types, deep nesting, huge strings, hostile paths) never panic, never take more
//! than a second, and end either in a valid manifest or in an error that points inside the
//! file (and renders).
//!
//! `cargo test -p pixelgen-build --test manifest_mutations` runs 4,000 cases; for a longer
//! run: `PIXELGEN_MUTATION_CASES=200000 cargo test --release -p pixelgen-build --test
//! manifest_mutations -- --nocapture` (`PIXELGEN_MUTATION_SEED` picks another sequence).

use std::path::Path;
use std::time::{Duration, Instant};

use pixelgen_build::manifest::{ManifestError, parse};

/// Valid manifests covering every field, as seeds for the mutations.
const SEEDS: [&str; 4] = [
    r##"(
    defaults: (
        size: (32, 32), palette: "endesga-32", background: Transparent, seed: 3,
        negative_prompt: "blurry", max_colors: 12, outline: "#1a1c2c",
    ),
    atlases: { "characters": (padding: 1, extrude: 1, max_size: (512, 512)), "items": (trim: false, power_of_two: true) },
    sprites: {
        "hero":      (prompt: "knight with a red cape", seed: 42, atlas: "characters"),
        "hero_walk": (prompt: "knight walking", seed: 43, atlas: "characters", frames: 4),
        "potion":    (prompt: "red potion bottle", seed: 7, atlas: "items", size: (16, 16), background: Color("#3a5f0b")),
    },
)"##,
    r#"(sprites: { "coin": (prompt: "gold coin") })"#,
    r#"(
    defaults: (generator: Diffusion(model: "models/tiny", steps: 4, guidance: 7.5, scheduler: Euler, resolution: (512, 512)),
               loras: [(path: "loras/style.safetensors", weight: 0.8)]),
    sprites: { "slime": (prompt: "green slime", frames: 2, loras: [(path: "loras/other.safetensors", weight: -0.5)]) },
)"#,
    r##"(atlases: { "a": () }, sprites: { "x": (prompt: "x", atlas: "a", palette: "pico-8", max_colors: 3, outline: "#000000", background: Keep, negative_prompt: "") })"##,
];

/// Values at the edges of what the fields take.
const EDGE_NUMBERS: [&str; 22] = [
    "0",
    "1",
    "-1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e309",
    "-1e309",
    "NaN",
    "inf",
    "-inf",
    "-0.0",
    "1e-310",
    "0x7fffffff",
];

const HOSTILE_STRINGS: [&str; 12] = [
    "",
    " ",
    "/dev/zero",
    "/dev/stdin",
    "../../../../etc/passwd",
    "/",
    ".",
    "nul\u{0}byte",
    "é\u{301}🦀",
    "a.ckpt",
    "\\\\server\\share",
    "C:\\Windows",
];

/// xorshift64*: deterministic, no crates needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A token's byte range.
type Span = (usize, usize);

/// Byte ranges of number and string tokens (enough of RON's lexer for mutations).
fn tokens(text: &str) -> (Vec<Span>, Vec<Span>) {
    let bytes = text.as_bytes();
    let (mut numbers, mut strings) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                strings.push((start, (i + 1).min(bytes.len())));
                i += 1;
            }
            b'0'..=b'9' | b'-' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || b".-+".contains(&bytes[i]))
                {
                    i += 1;
                }
                numbers.push((start, i));
            }
            _ => i += 1,
        }
    }
    (numbers, strings)
}

/// One mutation of `text`.
fn mutate(text: &str, rng: &mut Rng) -> String {
    let (numbers, strings) = tokens(text);
    let mut out = text.to_owned();
    let replace = |out: &mut String, (start, end): Span, with: &str| {
        if out.is_char_boundary(start) && out.is_char_boundary(end) {
            out.replace_range(start..end, with);
        }
    };
    match rng.below(10) {
        // A number at an edge of its type.
        0 | 1 if !numbers.is_empty() => {
            let at = numbers[rng.below(numbers.len())];
            let with = rng.pick(&EDGE_NUMBERS);
            replace(&mut out, at, with);
        }
        // A hostile or huge string.
        2 | 3 if !strings.is_empty() => {
            let at = strings[rng.below(strings.len())];
            let with = match rng.below(4) {
                0 => format!("{:?}", "x".repeat(300_000)),
                1 => format!("{:?}", "€".repeat(30_000)),
                _ => format!("{:?}", rng.pick(&HOSTILE_STRINGS)),
            };
            replace(&mut out, at, &with);
        }
        // Deep nesting where a value starts.
        4 => {
            let depth = [10, 200, 5_000, 100_000][rng.below(4)];
            let open = ["(", "[", "{", "Some("][rng.below(4)];
            let close = match open {
                "[" => "]",
                "{" => "}",
                _ => ")",
            };
            let at = text.find(':').map_or(0, |i| i + 1);
            out = format!(
                "{}{}1{}{}",
                &text[..at],
                open.repeat(depth),
                close.repeat(depth),
                &text[at..]
            );
        }
        // A span of the file copied elsewhere (duplicate keys, misplaced fields).
        5 => {
            let (a, b) = (rng.below(text.len()), rng.below(text.len()));
            let (start, end) = (a.min(b), a.max(b).min(a.min(b) + 200));
            let at = rng.below(text.len());
            if [start, end, at].iter().all(|&i| text.is_char_boundary(i)) {
                out.insert_str(at, &text[start..end]);
            }
        }
        // A span deleted.
        6 => {
            let start = rng.below(text.len());
            let end = (start + 1 + rng.below(40)).min(text.len());
            replace(&mut out, (start, end), "");
        }
        // Random bytes (kept UTF-8: the manifest is read as text).
        _ => {
            let mut bytes = out.into_bytes();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(3) {
                    0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                    1 => {
                        const PIECES: &[u8] = b"(){}[]:,\"#-.0123456789eE_aZ \n\\";
                        bytes.insert(at, PIECES[rng.below(PIECES.len())]);
                    }
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            out = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    out
}

#[test]
fn mutated_manifests_end_in_a_located_error_or_a_valid_manifest() {
    let cases: usize = std::env::var("PIXELGEN_MUTATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let seed: u64 = std::env::var("PIXELGEN_MUTATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    // Paths in the manifests resolve here (a palette, a LoRA and a model folder exist, so
    // that some mutations reach the checks behind them).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("loras")).unwrap();
    std::fs::create_dir_all(dir.path().join("models/tiny")).unwrap();
    std::fs::write(dir.path().join("loras/style.safetensors"), b"not really").unwrap();
    let manifest_path = dir.path().join("sprites.ron");
    let mut rng = Rng(seed);
    let (mut valid, mut located, mut slowest) = (0usize, 0usize, Duration::ZERO);
    for case in 0..cases {
        let mut text = SEEDS[case % SEEDS.len()].to_owned();
        for _ in 0..1 + rng.below(3) {
            text = mutate(&text, &mut rng);
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| parse(Path::new(&manifest_path), &text));
        let took = started.elapsed();
        slowest = slowest.max(took);
        let shown: String = text.chars().take(600).collect();
        match result {
            Err(_) => panic!("case {case} panicked on:\n{shown}"),
            Ok(Ok(_)) => valid += 1,
            Ok(Err(ManifestError::Invalid(diagnostic))) => {
                let span = &diagnostic.span;
                assert!(
                    span.start <= span.end && span.end <= text.len(),
                    "case {case}: span {span:?} outside the {}-byte file:\n{shown}",
                    text.len()
                );
                let rendered = diagnostic.to_string();
                assert!(rendered.contains("sprites.ron:"), "case {case}: {rendered}");
                located += 1;
            }
            Ok(Err(other)) => panic!("case {case}: not a located error: {other}\n{shown}"),
        }
        assert!(
            took < Duration::from_secs(1),
            "case {case} took {took:?}:\n{shown}"
        );
    }
    eprintln!(
        "{cases} mutated manifests (seed {seed}): {valid} valid, {located} refused with a located error, 0 panics; slowest {slowest:?}"
    );
    assert_eq!(valid + located, cases);
    assert!(
        located > cases / 2,
        "the mutations hardly break anything: {located}"
    );
}
