//! `cargo pixelgen pack`: a folder of PNGs → atlas PNG(s) and TexturePacker "JSON hash"
//! files, for engines and tools outside Bevy. Same packer as the build.

use std::path::{Path, PathBuf};

use image::RgbaImage;
use pixelgen_build::atlas::{self, AtlasOptions, PackedAtlas, Source};
use pixelgen_build::cache::{encode_png, write_atomically};
use pixelgen_build::{FrameId, SpriteName};
use serde_json::{Map, Value, json};

#[derive(clap::Args)]
pub struct Pack {
    /// Folder of PNG sprites (searched recursively). Frame names are paths relative to it,
    /// with `/` separators and the extension, as TexturePacker names them.
    dir: PathBuf,
    /// Where to write the atlas PNG. Further pages, when the sprites exceed --max-size,
    /// go beside it as NAME-1.png, NAME-2.png, …
    #[arg(short = 'o', long = "output", value_name = "ATLAS.png")]
    output: PathBuf,
    /// Where to write the TexturePacker JSON (hash format); pages as NAME-1.json, …
    #[arg(long, value_name = "ATLAS.json")]
    json: PathBuf,
    /// Transparent pixels between sprites.
    #[arg(long, value_name = "P", default_value_t = 1)]
    padding: u32,
    /// Largest page, as WIDTHxHEIGHT; more sprites go onto more pages.
    #[arg(long, value_name = "WxH", default_value = "4096x4096", value_parser = parse_max_size)]
    max_size: (u32, u32),
    /// Copy each sprite's edge pixels outward this far (against bleeding when filtering).
    #[arg(long, value_name = "N", default_value_t = 0)]
    extrude: u32,
    /// Cut transparent borders off; `spriteSourceSize` and `sourceSize` say where the
    /// frame lies in the original image.
    #[arg(long)]
    trim: bool,
    /// Round page sizes up to powers of two.
    #[arg(long)]
    power_of_two: bool,
}

pub fn run(args: Pack) -> Result<(), String> {
    let frames = read_sprites(&args.dir)?;
    // Each PNG is a sprite of one frame, named by its path.
    let ids: Vec<FrameId> = frames
        .iter()
        .map(|(name, _)| SpriteName::from(name.as_str()).frame(0))
        .collect();
    let sources: Vec<Source<'_>> = ids
        .iter()
        .zip(&frames)
        .map(|(id, (_, image))| Source {
            id,
            image,
            tiling: None,
        })
        .collect();
    let (max_width, max_height) = args.max_size;
    let options = AtlasOptions {
        padding: args.padding,
        extrude: args.extrude,
        max_width,
        max_height,
        power_of_two: args.power_of_two,
        trim: args.trim,
    };
    let packed = atlas::pack(&sources, &options).map_err(|e| e.to_string())?;
    let pages = packed.pages.len();
    for (page, image) in packed.pages.iter().enumerate() {
        let png = page_path(&args.output, page);
        let json_path = page_path(&args.json, page);
        let bytes =
            encode_png(image).map_err(|e| format!("cannot encode {}: {e}", png.display()))?;
        write_atomically(&png, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", png.display()))?;
        let document = texture_packer_json(&frames, &packed, page, &png);
        let text = serde_json::to_string_pretty(&document).unwrap_or_default();
        write_atomically(&json_path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
        println!(
            "{}: {}x{} px, {} frames; {}",
            png.display(),
            image.width(),
            image.height(),
            packed.frames.iter().filter(|f| f.page == page).count(),
            json_path.display()
        );
    }
    let area: u64 = packed
        .frames
        .iter()
        .map(|f| u64::from(f.rect.width) * u64::from(f.rect.height))
        .sum();
    let distinct = {
        let mut rects: Vec<_> = packed.frames.iter().map(|f| (f.page, f.rect)).collect();
        rects.sort_by_key(|(p, r)| (*p, r.y, r.x, r.width, r.height));
        rects.dedup();
        rects.len()
    };
    println!(
        "pixelgen: {} sprites ({} distinct) on {pages} page(s); {} px² of sprites",
        frames.len(),
        distinct,
        area
    );
    Ok(())
}

/// Every `.png` under `dir`, sorted by name, decoded.
fn read_sprites(dir: &Path) -> Result<Vec<(String, RgbaImage)>, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder of PNG sprites", dir.display()));
    }
    let mut frames = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !entry.file_type().is_file() || !is_png {
            continue;
        }
        let relative = path.strip_prefix(dir).unwrap_or(path);
        let name = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let image = image::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .to_rgba8();
        frames.push((name, image));
    }
    if frames.is_empty() {
        return Err(format!("no .png files in {}", dir.display()));
    }
    Ok(frames)
}

/// `base` for page 0, `stem-N.ext` beside it for page N.
fn page_path(base: &Path, page: usize) -> PathBuf {
    if page == 0 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let name = match base.extension() {
        Some(ext) => format!("{stem}-{page}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{page}"),
    };
    base.with_file_name(name)
}

/// TexturePacker's "JSON hash" for one page: `frames.NAME.{frame, rotated, trimmed,
/// spriteSourceSize, sourceSize}` and `meta.{app, version, image, format, size, scale}`.
fn texture_packer_json(
    frames: &[(String, RgbaImage)],
    packed: &PackedAtlas,
    page: usize,
    png: &Path,
) -> Value {
    let mut entries = Map::new();
    for ((name, _), frame) in frames.iter().zip(&packed.frames) {
        if frame.page != page {
            continue;
        }
        let (r, t) = (frame.rect, frame.trim);
        entries.insert(
            name.clone(),
            json!({
                "frame": { "x": r.x, "y": r.y, "w": r.width, "h": r.height },
                "rotated": false,
                "trimmed": t.is_trimmed(&r),
                "spriteSourceSize": { "x": t.x, "y": t.y, "w": r.width, "h": r.height },
                "sourceSize": { "w": t.source_width, "h": t.source_height },
            }),
        );
    }
    let image = &packed.pages[page];
    let file_name = png
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    json!({
        "frames": entries,
        "meta": {
            "app": "https://github.com/pixelgen/pixelgen",
            "version": env!("CARGO_PKG_VERSION"),
            "image": file_name,
            "format": "RGBA8888",
            "size": { "w": image.width(), "h": image.height() },
            "scale": "1",
        },
    })
}

fn parse_max_size(text: &str) -> Result<(u32, u32), String> {
    crate::pixelize::parse_dimensions(text, 65536)
}
