//! A conditioned frame's images as an image server receives them: read, brought to the
//! drawing's size, masks in the server's convention, as PNG ([`frame_png`]); each distinct
//! one uploaded once per group and server ([`Uploads`]).

use std::collections::HashMap;

use super::http::{Client, HttpError};
use crate::generate::conditioning::ImageFile;

/// How a server reads a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum MaskWhite {
    /// White is repainted, as in pixelgen's masks (ComfyUI's `LoadImageMask`).
    Repaints,
    /// White is kept (InvokeAI's `InpaintExt`: "1 means … should not be inpainted").
    Keeps,
}

/// A frame's image as sent: read, brought to the drawing's `size` when given (a
/// sprite-sized sketch without smoothing; a control image keeps its own, the server
/// resizes it), as PNG. A mask is turned to grey as PIL's `convert("L")` does, and
/// inverted for a server whose masks keep white.
pub(super) fn frame_png(
    file: &ImageFile,
    size: Option<(u32, u32)>,
    mask: Option<MaskWhite>,
) -> Result<Vec<u8>, String> {
    let image = image::open(&file.resolved)
        .map_err(|e| format!("cannot read {}: {e}", file.resolved.display()))?;
    let (width, height) = size.unwrap_or((image.width(), image.height()));
    let image = if (image.width(), image.height()) == (width, height) {
        image
    } else {
        image.resize_exact(width, height, image::imageops::FilterType::Nearest)
    };
    let image = if let Some(white) = mask {
        // Grey in every channel: ComfyUI's `LoadImageMask` reads one colour channel.
        let rgb = image.to_rgb8();
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
            let grey = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8;
            let value = if white == MaskWhite::Keeps {
                255 - grey
            } else {
                grey
            };
            image::Rgb([value; 3])
        }))
    } else {
        image::DynamicImage::ImageRgb8(image.to_rgb8())
    };
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| format!("cannot encode {}: {e}", file.resolved.display()))?;
    Ok(bytes)
}

/// What [`frame_png`] is asked for: the file, the size and the mask convention.
type Prepared = (std::path::PathBuf, Option<(u32, u32)>, Option<MaskWhite>);

/// Images uploaded to one server for one group of frames: by the blake3 of the bytes sent,
/// and by what was prepared, so a group's frames (which share their images) read and
/// encode each image once.
#[derive(Debug, Default)]
pub(super) struct Uploads {
    by_hash: HashMap<String, String>,
    by_source: HashMap<Prepared, String>,
}

impl Uploads {
    /// The server's name for `file` as [`frame_png`] makes it; the first time, `send` uploads
    /// the bytes under a file name made of their hash and answers that name.
    pub(super) fn name_of(
        &mut self,
        client: &Client,
        file: &ImageFile,
        size: Option<(u32, u32)>,
        mask: Option<MaskWhite>,
        send: impl FnOnce(&[u8], &str) -> Result<String, HttpError>,
    ) -> Result<String, HttpError> {
        let source = (file.resolved.clone(), size, mask);
        if let Some(name) = self.by_source.get(&source) {
            return Ok(name.clone());
        }
        let bytes = frame_png(file, size, mask).map_err(|e| client.unexpected("upload", e))?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let name = match self.by_hash.get(&hash) {
            Some(name) => name.clone(),
            None => {
                let name = send(&bytes, &format!("pixelgen-{}.png", &hash[..32]))?;
                self.by_hash.insert(hash, name.clone());
                name
            }
        };
        self.by_source.insert(source, name.clone());
        Ok(name)
    }
}
