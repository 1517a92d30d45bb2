//! `cargo pixelgen pixelize`: one raw image → exact-size pixel art, as the build does it.

use std::path::{Path, PathBuf};

use pixelgen_build::manifest::Background;
use pixelgen_build::palette::{Palette, Rgb};
use pixelgen_build::pixelize::{Options, pixelize};

#[derive(clap::Args)]
pub struct Pixelize {
    /// The raw image (PNG), e.g. a diffusion model's output.
    input: PathBuf,
    /// Output size in pixels, as WIDTHxHEIGHT (the manifest's `size`).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    size: (u32, u32),
    /// Where to write the PNG.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    /// Map onto this palette: a built-in name (pico-8, endesga-32, …) or a .hex/.gpl file.
    /// Without it, the palette is found from the image.
    #[arg(long, value_name = "NAME|FILE")]
    palette: Option<String>,
    /// Make the background (flood-filled from the border) transparent.
    #[arg(long)]
    transparent: bool,
    /// At most this many colours when no palette is given.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_colors: Option<u32>,
    /// Draw a 1-pixel outline of this colour (#RRGGBB) around the sprite; implies --transparent.
    #[arg(long, value_name = "#RRGGBB", value_parser = parse_color)]
    outline: Option<Rgb>,
}

pub fn run(args: Pixelize) -> Result<(), String> {
    let raw = image::open(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?
        .to_rgba8();
    let palette = args.palette.as_deref().map(load_palette).transpose()?;
    let (width, height) = args.size;
    let options = Options {
        width,
        height,
        palette,
        max_colors: args.max_colors.map(|n| n as usize),
        background: if args.transparent || args.outline.is_some() {
            Background::Transparent
        } else {
            Background::Keep
        },
        outline: args.outline,
    };
    let out = pixelize(&raw, &options);
    out.save_with_format(&args.output, image::ImageFormat::Png)
        .map_err(|e| format!("cannot write {}: {e}", args.output.display()))
}

/// A .hex or .gpl file, else a built-in palette name.
fn load_palette(spec: &str) -> Result<Palette, String> {
    let path = Path::new(spec);
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if matches!(extension.as_deref(), Some("hex" | "gpl")) {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read palette file {}: {e}", path.display()))?;
        let parsed = if extension.as_deref() == Some("hex") {
            Palette::from_hex(spec, &text)
        } else {
            Palette::from_gpl(spec, &text)
        };
        return parsed.map_err(|e| format!("palette file {} is invalid: {e}", path.display()));
    }
    Palette::builtin(spec).ok_or_else(|| {
        format!(
            "unknown palette `{spec}`: use a built-in palette ({}) or a .hex or .gpl file",
            Palette::BUILTIN_NAMES.join(", ")
        )
    })
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parsed = text
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 && w <= 4096 && h <= 4096 => Ok((w, h)),
        _ => Err(format!(
            "`{text}` is not a size: write WIDTHxHEIGHT, e.g. 32x32 (1 to 4096 each)"
        )),
    }
}

fn parse_color(text: &str) -> Result<Rgb, String> {
    let hex = text.strip_prefix('#').unwrap_or(text);
    let channel = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    match (hex.len(), channel(0), channel(2), channel(4)) {
        (6, Some(r), Some(g), Some(b)) => Ok([r, g, b]),
        _ => Err(format!("`{text}` is not a colour: write #RRGGBB")),
    }
}
