//! What a conditioned InvokeAI sprite adds to a submission: each frame's init image, mask
//! and control images uploaded (each distinct one once per group) and named in the
//! batch's data, in the fields of the graph's `i2l`, `create_denoise_mask` and
//! `controlnet` nodes.

use super::InvokeAi;
use crate::generate::conditioning::ImageFile;
use crate::generate::image_servers::FrameRequest;
use crate::generate::image_servers::http::HttpError;
use crate::generate::image_servers::uploads::MaskWhite;

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

    /// The server's name for `file` as sent (`uploads::frame_png`), uploaded the first time.
    fn upload(
        &mut self,
        file: &ImageFile,
        size: Option<(u32, u32)>,
        mask: Option<MaskWhite>,
    ) -> Result<String, HttpError> {
        let client = &self.client;
        self.uploaded
            .name_of(client, file, size, mask, |bytes, file_name| {
                let answer = client.upload(
                    "/api/v1/images/upload",
                    &[("image_category", "user"), ("is_intermediate", "true")],
                    "file",
                    file_name,
                    "image/png",
                    bytes,
                )?;
                answer["image_name"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| client.unexpected("images/upload", "no image_name"))
            })
    }
}
