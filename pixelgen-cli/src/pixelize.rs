//! `cargo pixelgen pixelize`: one raw image → exact-size pixel art, as the build does it.

use std::path::{Path, PathBuf};

use pixelgen_build::manifest::Background;
use pixelgen_build::palette::{Palette, PaletteLoadError, Rgb, parse_hex_color};
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
        tiling: None,
    };
    let out = pixelize(&raw, &options);
    out.save_with_format(&args.output, image::ImageFormat::Png)
        .map_err(|e| format!("cannot write {}: {e}", args.output.display()))
}

/// A .hex or .gpl file (relative to the current folder), else a built-in palette name.
fn load_palette(spec: &str) -> Result<Palette, String> {
    Palette::load(spec, Path::new("")).map_err(|error| match error {
        PaletteLoadError::Unknown { .. } => format!(
            "{error}: use a built-in palette ({}) or a .hex or .gpl file",
            Palette::BUILTIN_NAMES.join(", ")
        ),
        other => other.to_string(),
    })
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    parse_dimensions(text, 4096)
}

/// `WIDTHxHEIGHT`, each from 1 to `limit`.
pub(crate) fn parse_dimensions(text: &str, limit: u32) -> Result<(u32, u32), String> {
    let parsed = text
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 && w <= limit && h <= limit => Ok((w, h)),
        _ => Err(format!(
            "`{text}` is not a size: write WIDTHxHEIGHT, e.g. 32x32 (1 to {limit} each)"
        )),
    }
}

fn parse_color(text: &str) -> Result<Rgb, String> {
    parse_hex_color(text).ok_or_else(|| format!("`{text}` is not a colour: write #RRGGBB"))
}
