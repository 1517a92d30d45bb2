//! What a conditioned InvokeAI sprite adds to a submission: each frame's init image, mask
//! and control images uploaded (each distinct one once per group) and named in the
//! batch's data, in the fields of the graph's `i2l`, `create_denoise_mask` and
//! `controlnet` nodes.

use super::InvokeAi;
use crate::generate::conditioning::ImageFile;
use crate::generate::image_servers::FrameRequest;
use crate::generate::image_servers::http::HttpError;

/// A graph field that takes an image, and each frame's image name on the server.
pub(super) type ImageColumn = (String, &'static str, Vec<String>);

/// The node that encodes a frame's init image.
pub(super) const INIT_NODE: &str = "init";
/// The node that makes a frame's denoise mask.
pub(super) const MASK_NODE: &str = "mask";

/// The node of the group's `index`-th ControlNet.
pub(super) fn control_node(index: usize) -> String {
    format!("control{index}")
}

/// How a server reads a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskWhite {
    /// White is repainted, as in pixelgen's masks (ComfyUI's `LoadImageMask`).
    Repaints,
    /// White is kept (InvokeAI's `InpaintExt`: "1 means … should not be inpainted").
    Keeps,
}

/// A frame's image as sent: read, brought to the drawing's `size` when given (a
/// sprite-sized sketch without smoothing; a control image keeps its own, the server
/// resizes it), as PNG. A mask is turned to grey as PIL's `convert("L")` does, and
/// inverted for a server whose masks keep white.
pub(crate) fn frame_png(
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

impl InvokeAi {
    /// `frames`' images uploaded (each distinct one once per group): per graph field that
    /// takes one, the name of each frame's image on the server.
    pub(super) fn frame_images(
        &mut self,
        frames: &[(usize, &FrameRequest)],
    ) -> Result<Vec<ImageColumn>, HttpError> {
        let mut columns = self.control_images(frames)?;
        let Some(group_init) = &self.settings.conditioning.init else {
            return Ok(columns);
        };
        let with_mask = group_init.mask.is_some();
        let first = columns.len();
        columns.push((INIT_NODE.to_string(), "image", Vec::new()));
        if with_mask {
            columns.push((MASK_NODE.to_string(), "image", Vec::new()));
            columns.push((MASK_NODE.to_string(), "mask", Vec::new()));
        }
        let size = Some((self.settings.width, self.settings.height));
        for (_, frame) in frames {
            let init = frame.conditioning.init.as_ref().ok_or_else(|| {
                self.client.unexpected(
                    "submit",
                    "a frame without the init image its group draws from",
                )
            })?;
            let image = self.upload(&init.image, size, None)?;
            columns[first].2.push(image.clone());
            if with_mask {
                let mask = init.mask.as_ref().ok_or_else(|| {
                    self.client
                        .unexpected("submit", "a frame without its group's mask")
                })?;
                let mask = self.upload(mask, size, Some(MaskWhite::Keeps))?;
                columns[first + 1].2.push(image);
                columns[first + 2].2.push(mask);
            }
        }
        Ok(columns)
    }

    /// Each ControlNet's control image of each frame, uploaded as it is (InvokeAI's
    /// `controlnet` node resizes it to the drawing, `just_resize`).
    fn control_images(
        &mut self,
        frames: &[(usize, &FrameRequest)],
    ) -> Result<Vec<ImageColumn>, HttpError> {
        let count = self.settings.conditioning.controlnets.len();
        let mut columns: Vec<ImageColumn> = (0..count)
            .map(|i| (control_node(i), "image", Vec::new()))
            .collect();
        for (_, frame) in frames {
            for (i, column) in columns.iter_mut().enumerate() {
                let controlnet = frame.conditioning.controlnets.get(i).ok_or_else(|| {
                    self.client
                        .unexpected("submit", "a frame without its group's control images")
                })?;
                column.2.push(self.upload(&controlnet.image, None, None)?);
            }
        }
        Ok(columns)
    }

    /// The server's name for `file` as [`frame_png`] sends it, uploading it the first time.
    fn upload(
        &mut self,
        file: &ImageFile,
        size: Option<(u32, u32)>,
        mask: Option<MaskWhite>,
    ) -> Result<String, HttpError> {
        let bytes = frame_png(file, size, mask).map_err(|e| self.client.unexpected("upload", e))?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        if let Some(name) = self.uploaded.get(&hash) {
            return Ok(name.clone());
        }
        let answer = self.client.upload(
            "/api/v1/images/upload",
            &[("image_category", "user"), ("is_intermediate", "true")],
            "file",
            &format!("pixelgen-{}.png", &hash[..16]),
            "image/png",
            &bytes,
        )?;
        let name = answer["image_name"]
            .as_str()
            .ok_or_else(|| self.client.unexpected("images/upload", "no image_name"))?
            .to_string();
        self.uploaded.insert(hash, name.clone());
        Ok(name)
    }
}
