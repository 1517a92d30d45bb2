//! The MCP resources: the manifest and every published atlas page.

use super::*;

impl PixelgenMcp {
    pub(super) fn resources(&self) -> Result<Vec<Resource>, Error> {
        let project = self.project()?;
        let mut resources = vec![
            Resource::new(MANIFEST_URI, "sprites.ron")
                .with_description("The crate's sprite manifest, as it is on disk")
                .with_mime_type("text/plain"),
        ];
        if let Ok(index) = live_index(&project) {
            for atlas in &index.atlases {
                for (page, indexed) in atlas.pages.iter().enumerate() {
                    resources.push(
                        Resource::new(
                            format!("{ATLAS_URI_PREFIX}{}/{page}.png", atlas.name),
                            format!("atlas {} page {page}", atlas.name),
                        )
                        .with_description(format!(
                            "The published page ({}×{} px, {} layout indices) a running dev build shows",
                            indexed.width,
                            indexed.height,
                            indexed.rects.len()
                        ))
                        .with_mime_type("image/png"),
                    );
                }
            }
        }
        Ok(resources)
    }

    pub(super) fn read(&self, uri: &str) -> Result<ResourceContents, ErrorData> {
        let project = self
            .project()
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        if uri == MANIFEST_URI {
            let text = std::fs::read_to_string(&project.manifest_path).map_err(|e| {
                ErrorData::internal_error(
                    format!("cannot read {}: {e}", project.manifest_path.display()),
                    None,
                )
            })?;
            return Ok(ResourceContents::text(text, uri).with_mime_type("text/plain"));
        }
        let not_found = || {
            ErrorData::resource_not_found(
                format!("no resource {uri}; list them with resources/list"),
                None,
            )
        };
        let (atlas, page) = uri
            .strip_prefix(ATLAS_URI_PREFIX)
            .and_then(|rest| rest.strip_suffix(".png"))
            .and_then(|rest| rest.rsplit_once('/'))
            .ok_or_else(not_found)?;
        let page: usize = page.parse().map_err(|_| not_found())?;
        let index =
            live_index(&project).map_err(|message| ErrorData::internal_error(message, None))?;
        // The page's path comes from the index, never from the URI.
        let indexed = index
            .atlases
            .iter()
            .find(|a| a.name == atlas)
            .and_then(|a| a.pages.get(page))
            .ok_or_else(not_found)?;
        let bytes = std::fs::read(&indexed.image).map_err(|e| {
            ErrorData::internal_error(
                format!("cannot read {}: {e}", indexed.image.display()),
                None,
            )
        })?;
        Ok(
            ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(bytes), uri)
                .with_mime_type("image/png"),
        )
    }
}
