//! Raw manifest → validated [`Manifest`]: each sprite's fields merged with `defaults`
//! (`merge`), then every value checked, each error a [`Diagnostic`] at the line and column
//! where the value is written, with what to do.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::merge::{Merged, MergedSprite};
use super::raw::{
    RawBackground, RawDefaults, RawGenerator, RawLora, RawManifest, RawSprite, RawTrainedLora,
    RawWorkflowInputs,
};
use super::{
    AtlasSpec, Background, DEFAULT_ATLAS, LoraSource, LoraSpec, MAX_FRAMES, MAX_GUIDANCE,
    MAX_PAGE_SIDE, MAX_RESOLUTION, MAX_SIDE, MAX_SPACING, MAX_STEPS, Manifest, SpriteSpec,
    TrainedLoraSpec, TrainingSettings,
};
use crate::atlas::AtlasOptions;
use crate::diagnostics::{Diagnostic, Locator, SourceFile};
use crate::generate::GeneratorSpec;
use crate::generate::diffusion::DiffusionSpec;
use crate::generate::image_servers::{
    Endpoint, SERVER_DEFAULT_GUIDANCE, SERVER_DEFAULT_SCHEDULER, SERVER_DEFAULT_STEPS, ServerKind,
    ServerSpec, WorkflowInputs, WorkflowSpec,
};
use crate::identity::{AtlasName, LoraName, SpriteName};
use crate::input_file::{FileKind, InputFileError, MAX_LORA_BYTES, MAX_MODEL_FILE_BYTES};
use crate::palette::{Palette, PaletteLoadError, parse_hex_color};

/// Validates `raw`, read from `source` (the text of the manifest at `path`).
pub(super) fn validate(
    raw: RawManifest,
    source: &SourceFile,
    text: &str,
    path: &Path,
) -> Result<Manifest, Invalid> {
    Validator {
        source,
        input_files: Default::default(),
        locator: Locator::new(text),
        dir: path.parent().unwrap_or(Path::new(".")),
    }
    .validate(raw)
}

struct Validator<'a> {
    source: &'a SourceFile,
    /// Files the manifest reads itself (palettes), even ones that fail to load.
    input_files: std::cell::RefCell<Vec<PathBuf>>,
    locator: Locator<'a>,
    dir: &'a Path,
}

type Invalid = Box<Diagnostic>;

/// A sprite's key: its name, the Rust constant it becomes, and where the name is written.
struct SpriteEntry<'a> {
    name: &'a str,
    constant: String,
    span: Range<usize>,
}

impl Validator<'_> {
    fn validate(&self, raw: RawManifest) -> Result<Manifest, Invalid> {
        let atlases = self.atlases(&raw)?;
        let trained_loras = self.trained_loras(&raw)?;
        let defaults = &raw.defaults;
        let default_palette = match &defaults.palette {
            Some(name) => Some(self.palette(name, None)?),
            None => None,
        };

        let mut sprites: Vec<SpriteSpec> = Vec::with_capacity(raw.sprites.0.len());
        let mut seen: BTreeMap<String, String> = BTreeMap::new(); // constant → sprite name
        for (occurrence_of, (name, sprite)) in occurrences(&raw.sprites.0) {
            let span = self.key_span(name, occurrence_of);
            let constant = self.identifier(name, &span, "sprite", Case::Upper)?;
            if occurrence_of > 0 {
                return Err(self
                    .error(span, format!("duplicate sprite name `{name}`"))
                    .label("defined again here")
                    .help("sprite names must be unique: rename one of them")
                    .into());
            }
            if let Some(other) = seen.insert(constant.clone(), name.clone()) {
                return Err(self
                    .error(span, format!("sprite names `{other}` and `{name}` both become the Rust constant `{constant}`"))
                    .label("collides once converted")
                    .help("rename one of them so that their identifiers differ")
                    .into());
            }
            let entry = SpriteEntry {
                name,
                constant,
                span,
            };
            sprites.push(self.sprite(
                entry,
                sprite,
                defaults,
                default_palette.as_ref(),
                &atlases,
                &trained_loras,
            )?);
        }
        sprites.sort_by(|a, b| a.name.cmp(&b.name));

        let mut used: Vec<AtlasSpec> = atlases
            .into_iter()
            .filter(|atlas| sprites.iter().any(|s| s.atlas == atlas.name))
            .collect();
        if sprites.iter().any(|s| s.atlas == DEFAULT_ATLAS)
            && !used.iter().any(|a| a.name == DEFAULT_ATLAS)
        {
            used.push(AtlasSpec {
                name: AtlasName::from(DEFAULT_ATLAS),
                module: DEFAULT_ATLAS.to_string(),
                options: AtlasOptions::default(),
            });
        }
        used.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Manifest {
            source: self.source.clone(),
            atlases: used,
            sprites,
            trained_loras,
            input_files: self.input_files.take(),
        })
    }

    fn atlases(&self, raw: &RawManifest) -> Result<Vec<AtlasSpec>, Invalid> {
        let mut atlases: Vec<AtlasSpec> = Vec::new();
        for (occurrence_of, (name, atlas)) in occurrences(&raw.atlases.0) {
            let span = self.key_span(name, occurrence_of);
            let module = self.identifier(name, &span, "atlas", Case::Lower)?;
            if occurrence_of > 0 {
                return Err(self
                    .error(span, format!("duplicate atlas name `{name}`"))
                    .label("defined again here")
                    .help("atlas names must be unique")
                    .into());
            }
            if let Some(other) = atlases.iter().find(|a| a.module == module) {
                return Err(self
                    .error(
                        span,
                        format!(
                            "atlas names `{}` and `{name}` both become the Rust module `{module}`",
                            other.name
                        ),
                    )
                    .label("collides once converted")
                    .help("rename one of them")
                    .into());
            }
            let defaults = AtlasOptions::default();
            let at = |field: &str| {
                self.locator
                    .field_after(span.end, field)
                    .map(|f| self.locator.value_after(&f))
                    .unwrap_or(span.clone())
            };
            let (max_width, max_height) = atlas
                .max_size
                .unwrap_or((defaults.max_width, defaults.max_height));
            let page_sides = 1..=MAX_PAGE_SIDE;
            if !page_sides.contains(&max_width) || !page_sides.contains(&max_height) {
                return Err(self
                    .error(
                        at("max_size"),
                        format!("atlas `{name}`: max_size {max_width}×{max_height} is out of range"),
                    )
                    .label("out of range")
                    .help(format!("pages go from (1, 1) to ({MAX_PAGE_SIDE}, {MAX_PAGE_SIDE}) pixels; e.g. `max_size: (2048, 2048)`"))
                    .into());
            }
            for (field, value) in [("padding", atlas.padding), ("extrude", atlas.extrude)] {
                if let Some(pixels) = value.filter(|&p| p > MAX_SPACING) {
                    return Err(self
                        .error(
                            at(field),
                            format!("atlas `{name}`: {field} of {pixels} pixels is out of range"),
                        )
                        .label("out of range")
                        .help(format!("use 0 to {MAX_SPACING} pixels (1 or 2 is usual)"))
                        .into());
                }
            }
            atlases.push(AtlasSpec {
                name: AtlasName::from(name.as_str()),
                module,
                options: AtlasOptions {
                    padding: atlas.padding.unwrap_or(defaults.padding),
                    extrude: atlas.extrude.unwrap_or(defaults.extrude),
                    max_width,
                    max_height,
                    power_of_two: atlas.power_of_two.unwrap_or(defaults.power_of_two),
                    trim: atlas.trim.unwrap_or(defaults.trim),
                },
            });
        }
        Ok(atlases)
    }

    /// Validates one sprite: its fields merged with `defaults`, then each checked.
    fn sprite(
        &self,
        entry: SpriteEntry<'_>,
        raw: &RawSprite,
        defaults: &RawDefaults,
        default_palette: Option<&Palette>,
        atlases: &[AtlasSpec],
        trained_loras: &[TrainedLoraSpec],
    ) -> Result<SpriteSpec, Invalid> {
        let merged = MergedSprite::of(raw, defaults);
        let (width, height) = self.size(&entry, merged.size)?;
        let frames = self.frames(&entry, merged.frames)?;
        self.prompt(&entry, merged.prompt)?;
        let atlas = self.sprite_atlas(&entry, merged.atlas, atlases)?;
        let options = atlases
            .iter()
            .find(|a| a.name == atlas)
            .map_or_else(AtlasOptions::default, |a| a.options);
        self.fits_a_page(&entry, &merged, (width, height, frames), &atlas, &options)?;
        let generator = self.generator(&entry, merged.generator)?;
        let loras = self.loras(&entry, merged.loras, trained_loras)?;
        if let GeneratorSpec::Server(spec) = &generator
            && spec.kind == ServerKind::ComfyUI
            && !loras.is_empty()
        {
            return Err(self
                .error(
                    self.field_span(&entry, "loras", &merged.loras),
                    format!("sprite `{}` draws with a ComfyUI workflow, which takes its LoRAs from its own LoraLoader nodes", entry.name),
                )
                .label("not applied by ComfyUI")
                .help("put the LoRA in the workflow (its file's bytes are then covered by the workflow's hash only through its name), or use an InvokeAI server, which pixelgen gives LoRAs by content")
                .into());
        }
        let palette = match merged.palette {
            Some(name) => Some(self.palette(name, Some(&entry.span))?),
            None => default_palette.cloned(),
        };
        let background = self.background(&entry, merged.background)?;
        let max_colors = self.max_colors(&entry, merged.max_colors)?;
        let outline = match merged.outline.value {
            None => None,
            Some(hex) => Some(self.color(
                hex,
                &entry.span,
                format!("outline `{hex}` is not a colour"),
                "write the outline colour as `outline: \"#1a1c2c\"`",
            )?),
        };
        Ok(SpriteSpec {
            name: SpriteName::from(entry.name),
            constant: entry.constant,
            prompt: merged.prompt.to_string(),
            negative_prompt: merged.negative_prompt.value.unwrap_or_default().to_string(),
            seed: merged.seed.value.unwrap_or(0),
            width,
            height,
            frames,
            animated: merged.frames.is_some(),
            atlas,
            generator,
            loras,
            palette,
            max_colors,
            background,
            outline,
            span: entry.span,
        })
    }

    /// Where `field`'s value is written: in the sprite's entry if it sets it, else in
    /// `defaults`; the sprite's name when the field cannot be found.
    fn field_span<T>(
        &self,
        entry: &SpriteEntry<'_>,
        field: &str,
        merged: &Merged<T>,
    ) -> Range<usize> {
        let start = if merged.in_sprite {
            Some(entry.span.end)
        } else {
            self.locator.field_after(0, "defaults").map(|r| r.end)
        };
        start
            .and_then(|s| self.locator.field_after(s, field))
            .map(|f| self.locator.value_after(&f))
            .unwrap_or(entry.span.clone())
    }

    fn size(
        &self,
        entry: &SpriteEntry<'_>,
        size: Merged<(u32, u32)>,
    ) -> Result<(u32, u32), Invalid> {
        let name = entry.name;
        let (width, height) = size.value.unwrap_or((32, 32));
        if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
            return Err(self
                .error(self.field_span(entry, "size", &size), format!("sprite `{name}` has size {width}×{height}"))
                .label("out of range")
                .help(format!("sizes go from (1, 1) to ({MAX_SIDE}, {MAX_SIDE}); pixel-art sprites are usually 16 to 64 pixels a side"))
                .into());
        }
        Ok((width, height))
    }

    fn frames(&self, entry: &SpriteEntry<'_>, frames: Option<u32>) -> Result<u32, Invalid> {
        let name = entry.name;
        let count = frames.unwrap_or(1);
        if !(1..=MAX_FRAMES).contains(&count) {
            let written = Merged {
                value: frames,
                in_sprite: true,
            };
            return Err(self
                .error(self.field_span(entry, "frames", &written), format!("sprite `{name}` has {count} frames"))
                .label("out of range")
                .help(format!("an animation has 1 to {MAX_FRAMES} frames; leave `frames` out for a still sprite"))
                .into());
        }
        Ok(count)
    }

    fn prompt(&self, entry: &SpriteEntry<'_>, prompt: &str) -> Result<(), Invalid> {
        if prompt.trim().is_empty() {
            let written = Merged {
                value: Some(prompt),
                in_sprite: true,
            };
            return Err(self
                .error(
                    self.field_span(entry, "prompt", &written),
                    format!("sprite `{}` has an empty prompt", entry.name),
                )
                .label("empty")
                .help("describe the sprite, e.g. `prompt: \"knight with a red cape\"`")
                .into());
        }
        Ok(())
    }

    /// The sprite's atlas, which must be declared (or the implicit default when none is).
    fn sprite_atlas(
        &self,
        entry: &SpriteEntry<'_>,
        atlas: Merged<&str>,
        atlases: &[AtlasSpec],
    ) -> Result<AtlasName, Invalid> {
        let name = AtlasName::from(atlas.value.unwrap_or(DEFAULT_ATLAS));
        let declared = atlases.iter().any(|a| a.name == name);
        let implicit = atlases.is_empty() && name == DEFAULT_ATLAS;
        if declared || implicit {
            return Ok(name);
        }
        let declared: Vec<&str> = atlases.iter().map(|a| a.name.as_str()).collect();
        let help = if declared.is_empty() {
            format!(
                "declare it: `atlases: {{ \"{name}\": () }}`, or leave `atlas` out to use the `{DEFAULT_ATLAS}` atlas"
            )
        } else {
            format!(
                "declared atlases: {}; add `\"{name}\": ()` to `atlases` or fix the name",
                declared.join(", ")
            )
        };
        Err(self
            .error(
                self.field_span(entry, "atlas", &atlas),
                format!(
                    "sprite `{}` uses atlas `{name}`, which is not declared",
                    entry.name
                ),
            )
            .label("unknown atlas")
            .help(help)
            .into())
    }

    /// The sprite's frames, untrimmed and extruded, must fit one page of its atlas side by
    /// side: trimming may make them smaller, but whether a build works must not depend on
    /// the pixels a generator draws.
    fn fits_a_page(
        &self,
        entry: &SpriteEntry<'_>,
        merged: &MergedSprite<'_>,
        (width, height, frames): (u32, u32, u32),
        atlas: &AtlasName,
        options: &AtlasOptions,
    ) -> Result<(), Invalid> {
        let (page_width, page_height) = options.page_limit();
        let extruded = |side: u32| u64::from(side) + 2 * u64::from(options.extrude);
        let (cell_width, cell_height) = (extruded(width), extruded(height));
        let name = entry.name;
        if cell_width > u64::from(page_width) || cell_height > u64::from(page_height) {
            return Err(self
                .error(
                    self.field_span(entry, "size", &merged.size),
                    format!(
                        "sprite `{name}` is {width}×{height} ({cell_width}×{cell_height} with extrusion) and does not fit a page of atlas `{atlas}` (at most {page_width}×{page_height})"
                    ),
                )
                .label("larger than a page")
                .help(format!("raise `max_size` of atlas `{atlas}`, lower its `extrude`, or make the sprite smaller"))
                .into());
        }
        let padding = u64::from(options.padding);
        let across = (u64::from(page_width) + padding) / (cell_width + padding);
        let down = (u64::from(page_height) + padding) / (cell_height + padding);
        if across * down < u64::from(frames) {
            let written = Merged {
                value: merged.frames,
                in_sprite: true,
            };
            return Err(self
                .error(
                    self.field_span(entry, "frames", &written),
                    format!(
                        "the {frames} frames of sprite `{name}` ({cell_width}×{cell_height} each with extrusion, {padding} apart) do not fit together on one page of atlas `{atlas}` (at most {page_width}×{page_height}, room for {})",
                        across * down
                    ),
                )
                .label("a sprite's frames share a page")
                .help(format!("raise `max_size` of atlas `{atlas}`, or use fewer or smaller frames"))
                .into());
        }
        Ok(())
    }

    fn generator(
        &self,
        entry: &SpriteEntry<'_>,
        generator: Merged<&RawGenerator>,
    ) -> Result<GeneratorSpec, Invalid> {
        let Some(raw) = generator.value else {
            return Ok(GeneratorSpec::Procedural);
        };
        // Each setting is located inside the `Diffusion(...)` or `Server(...)` that wrote it.
        let generator_at = self.field_span(entry, "generator", &generator);
        let at = |field: &str| {
            self.locator
                .field_after(generator_at.start, field)
                .filter(|f| f.start < generator_at.end)
                .map(|f| self.locator.value_after(&f))
                .unwrap_or(generator_at.clone())
        };
        let refuse = |field: &str, message: String, label: &str, help: String| -> Invalid {
            self.error(at(field), message)
                .label(label)
                .help(help)
                .into()
        };
        match raw {
            RawGenerator::Procedural => Ok(GeneratorSpec::Procedural),
            RawGenerator::Diffusion {
                model,
                steps,
                guidance,
                scheduler,
                resolution,
            } => {
                self.diffusion_model(model, &refuse)?;
                sampling_settings(*steps, *guidance, *resolution, &refuse)?;
                Ok(GeneratorSpec::Diffusion(DiffusionSpec {
                    model: model.clone(),
                    steps: *steps,
                    guidance: *guidance,
                    scheduler: *scheduler,
                    resolution: *resolution,
                }))
            }
            RawGenerator::Server {
                url,
                kind,
                model,
                steps,
                guidance,
                scheduler,
                resolution,
                workflow,
                inputs,
            } => {
                let settings_written = steps.is_some() || guidance.is_some() || scheduler.is_some();
                let urls = url.list();
                if urls.is_empty() {
                    return Err(refuse(
                        "url",
                        "the Server generator needs at least one URL".into(),
                        "no server",
                        "write `url: \"http://127.0.0.1:9090\"` or a list `url: [\"https://gpu-1:9090\", \"https://gpu-2:9090\"]`".into(),
                    ));
                }
                let mut endpoints = Vec::with_capacity(urls.len());
                for url in urls {
                    let endpoint = Endpoint::parse(url).map_err(|message| {
                        let located = self
                            .locator
                            .string_literals(url)
                            .into_iter()
                            .find(|r| r.start >= generator_at.start && r.end <= generator_at.end)
                            .unwrap_or(at("url"));
                        Invalid::from(
                            self.error(located, format!("server URL {message}"))
                                .label("not a server URL")
                                .help("write the server's base URL, e.g. `http://127.0.0.1:9090` or `https://gpu-1.studio.lan`"),
                        )
                    })?;
                    if !endpoints.contains(&endpoint) {
                        endpoints.push(endpoint);
                    }
                }
                let steps = steps.unwrap_or(SERVER_DEFAULT_STEPS);
                let guidance = guidance.unwrap_or(SERVER_DEFAULT_GUIDANCE);
                sampling_settings(steps, guidance, *resolution, &refuse)?;
                let scheduler = scheduler
                    .clone()
                    .unwrap_or_else(|| SERVER_DEFAULT_SCHEDULER.to_string());
                if scheduler.trim().is_empty()
                    || !scheduler
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
                {
                    return Err(refuse(
                        "scheduler",
                        format!("scheduler `{scheduler}` is not a scheduler name"),
                        "scheduler",
                        "use the server's name for it, e.g. `\"euler\"`, `\"ddim\"` or `\"dpmpp_2m_k\"` (InvokeAI)".into(),
                    ));
                }
                let model = model.clone().unwrap_or_default();
                let workflow = match kind {
                    ServerKind::InvokeAI => {
                        if model.trim().is_empty() {
                            return Err(refuse(
                                "model",
                                "an InvokeAI Server generator needs a model".into(),
                                "no model",
                                "write `model: \"name\"` with the model's name (or key) in the server's model manager".into(),
                            ));
                        }
                        for (field, written) in [
                            ("workflow", workflow.is_some()),
                            ("inputs", inputs.is_some()),
                        ] {
                            if written {
                                return Err(refuse(
                                    field,
                                    format!("`{field}` is for ComfyUI servers"),
                                    "ComfyUI only",
                                    "InvokeAI servers take a model, steps, guidance and scheduler; add `kind: ComfyUI` for a ComfyUI workflow".into(),
                                ));
                            }
                        }
                        None
                    }
                    ServerKind::ComfyUI => Some(self.workflow(
                        workflow.as_deref(),
                        inputs.as_ref(),
                        !model.is_empty(),
                        settings_written,
                        &refuse,
                    )?),
                };
                Ok(GeneratorSpec::Server(Box::new(ServerSpec {
                    kind: *kind,
                    endpoints,
                    model,
                    steps,
                    guidance,
                    scheduler,
                    resolution: *resolution,
                    workflow,
                })))
            }
        }
    }

    /// A ComfyUI generator's workflow: an API-format JSON file whose named nodes have the
    /// inputs pixelgen sets.
    fn workflow(
        &self,
        workflow: Option<&str>,
        inputs: Option<&RawWorkflowInputs>,
        model_written: bool,
        settings_written: bool,
        refuse: &dyn Fn(&str, String, &str, String) -> Invalid,
    ) -> Result<WorkflowSpec, Invalid> {
        let (Some(path), Some(inputs)) = (workflow, inputs) else {
            return Err(refuse(
                if workflow.is_none() { "kind" } else { "workflow" },
                "a ComfyUI Server generator needs a workflow and its input nodes".into(),
                "ComfyUI",
                "export the workflow with ComfyUI's \"Save (API Format)\" and write `workflow: \"workflows/sprite.json\", inputs: (prompt: \"6\", negative_prompt: \"7\", seed: \"3\", size: \"5\")` (node ids from that file)".into(),
            ));
        };
        let resolved = self.dir.join(path);
        self.input_files.borrow_mut().push(resolved.clone());
        let text = crate::input_file::read_to_string(&resolved, MAX_WORKFLOW_BYTES, "workflow")
            .map_err(|e| {
                refuse(
                    "workflow",
                    format!("workflow `{path}`: {e}"),
                    "unreadable",
                    "the path is relative to the folder of sprites.ron".into(),
                )
            })?;
        let nodes: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(nodes))
                if nodes.values().all(|n| {
                    n.get("class_type").is_some() && n.get("inputs").is_some_and(|i| i.is_object())
                }) =>
            {
                nodes
            }
            _ => {
                return Err(refuse(
                    "workflow",
                    format!("workflow `{path}` is not a ComfyUI workflow in API format"),
                    "not API format",
                    "in ComfyUI, use \"Save (API Format)\" (an object of node ids, each with `class_type` and `inputs`), not the UI's \"Save\"".into(),
                ));
            }
        };
        let input = |role: &str,
                     written: &str,
                     default_input: &str|
         -> Result<(String, String), Invalid> {
            let (node, name) = match written.split_once('.') {
                Some((node, name)) => (node, name),
                None => (written, default_input),
            };
            match nodes.get(node) {
                Some(n) if n["inputs"].get(name).is_some() => {
                    Ok((node.to_string(), name.to_string()))
                }
                Some(n) => Err(refuse(
                    "inputs",
                    format!(
                        "workflow `{path}`: node {node} ({}) has no input `{name}` for the {role}",
                        n["class_type"].as_str().unwrap_or("?")
                    ),
                    "no such input",
                    format!(
                        "its inputs: {}; write `{role}: \"{node}.<input>\"`",
                        n["inputs"]
                            .as_object()
                            .map(|i| i.keys().cloned().collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    ),
                )),
                None => Err(refuse(
                    "inputs",
                    format!("workflow `{path}` has no node `{node}` for the {role}"),
                    "no such node",
                    format!(
                        "its nodes: {}",
                        nodes
                            .iter()
                            .map(|(id, n)| format!(
                                "{id} ({})",
                                n["class_type"].as_str().unwrap_or("?")
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        };
        let node_with = |role: &str, node: &str, names: &[&str]| -> Result<String, Invalid> {
            for name in names {
                input(role, &format!("{node}.{name}"), name)?;
            }
            Ok(node.to_string())
        };
        if model_written && inputs.model.is_none() {
            return Err(refuse("model", "`model` needs the workflow node that takes it".into(), "no model input", "add `model: \"4\"` (the checkpoint loader's id) to `inputs`, or leave `model` out to use the workflow's own".into()));
        }
        if settings_written && inputs.sampler.is_none() {
            return Err(refuse("inputs", "steps, guidance and scheduler need the workflow's sampler node".into(), "no sampler input", "add `sampler: \"3\"` (the KSampler's id) to `inputs`, or leave the settings out to use the workflow's own".into()));
        }
        Ok(WorkflowSpec {
            path: path.to_string(),
            resolved,
            inputs: WorkflowInputs {
                prompt: input("prompt", &inputs.prompt, "text")?,
                negative_prompt: inputs
                    .negative_prompt
                    .as_deref()
                    .map(|n| input("negative prompt", n, "text"))
                    .transpose()?,
                seed: input("seed", &inputs.seed, "seed")?,
                size: inputs
                    .size
                    .as_deref()
                    .map(|n| node_with("size", n, &["width", "height"]))
                    .transpose()?,
                model: inputs
                    .model
                    .as_deref()
                    .filter(|_| model_written)
                    .map(|n| input("model", n, "ckpt_name"))
                    .transpose()?,
                sampler: inputs
                    .sampler
                    .as_deref()
                    .filter(|_| settings_written)
                    .map(|n| node_with("sampler", n, &["steps", "cfg", "sampler_name"]))
                    .transpose()?,
            },
        })
    }

    /// A Diffusion model's name: not empty, a folder, file or repo id, never a pickle.
    fn diffusion_model(
        &self,
        model: &str,
        refuse: &dyn Fn(&str, String, &str, String) -> Invalid,
    ) -> Result<(), Invalid> {
        if model.trim().is_empty() {
            return Err(refuse(
                "model",
                "the Diffusion generator needs a model".into(),
                "empty model",
                "set `model: \"stabilityai/sd-turbo\"` or a local folder".into(),
            ));
        }
        // A local model is a diffusers folder or a single .safetensors file; anything else
        // there (a FIFO, a device) is refused before anything tries to read it.
        let local = self.dir.join(model);
        match crate::input_file::non_file_kind(&local) {
            Some(FileKind::Directory) | None => {}
            Some(kind) => {
                return Err(refuse(
                    "model",
                    format!("model `{model}` is {kind}"),
                    "not a model",
                    "name a diffusers folder, a .safetensors checkpoint or a Hugging Face id"
                        .into(),
                ));
            }
        }
        if let Err(error @ InputFileError::TooLarge { .. }) =
            crate::input_file::check(&local, MAX_MODEL_FILE_BYTES, "model file")
        {
            return Err(refuse(
                "model",
                format!("model `{model}`: {error}"),
                "too large",
                "name the model's .safetensors checkpoint".into(),
            ));
        }
        if pixelgen_diffusion::files::is_pickle(Path::new(model)) {
            return Err(refuse(
                "model",
                format!("model `{model}` is a pickle checkpoint, which pixelgen refuses: loading one can run arbitrary code"),
                "pickle",
                "use the model's .safetensors file or a diffusers folder; convert once in Python with `safetensors.torch.save_file(torch.load(path, weights_only=True), \"model.safetensors\")`".into(),
            ));
        }
        Ok(())
    }

    fn loras(
        &self,
        entry: &SpriteEntry<'_>,
        loras: Merged<&[RawLora]>,
        trained_loras: &[TrainedLoraSpec],
    ) -> Result<Vec<LoraSpec>, Invalid> {
        let span = &entry.span;
        let mut specs = Vec::new();
        for lora in loras.value.into_iter().flatten() {
            let written = match (&lora.path, &lora.trained) {
                (Some(path), None) => path,
                (None, Some(name)) => name,
                (both, _) => {
                    let at = self.field_span(entry, "loras", &loras);
                    return Err(self
                        .error(
                            at,
                            if both.is_some() {
                                format!("sprite `{}`: a LoRA has both `path` and `trained`", entry.name)
                            } else {
                                format!("sprite `{}`: a LoRA has neither `path` nor `trained`", entry.name)
                            },
                        )
                        .label("one of the two")
                        .help("write `(path: \"style.safetensors\", weight: 0.8)` for a LoRA file, or `(trained: \"style\", weight: 0.8)` for one of `trained_loras`")
                        .into());
                }
            };
            let literals = self.locator.string_literals(written);
            if !lora.weight.is_finite() {
                let at = literals.first().cloned().unwrap_or(span.clone());
                return Err(self
                    .error(
                        at,
                        format!("LoRA `{written}` has a weight that is not a number"),
                    )
                    .help("use a weight such as 0.8")
                    .into());
            }
            let lora_span = literals
                .iter()
                .find(|r| r.start >= span.end)
                .or(literals.first())
                .cloned()
                .unwrap_or(span.clone());
            if lora.trained.is_some() {
                let name = LoraName::from(written.as_str());
                if !trained_loras.iter().any(|t| t.name == name) {
                    let declared: Vec<&str> =
                        trained_loras.iter().map(|t| t.name.as_str()).collect();
                    let help = if declared.is_empty() {
                        format!(
                            "declare it: `trained_loras: {{ \"{name}\": (images: \"art/{name}\", model: \"...\") }}`"
                        )
                    } else {
                        format!(
                            "declared trained LoRAs: {}; add `\"{name}\": (images: ..., model: ...)` to `trained_loras` or fix the name",
                            declared.join(", ")
                        )
                    };
                    return Err(self
                        .error(
                            lora_span,
                            format!(
                                "sprite `{}` uses trained LoRA `{name}`, which is not declared",
                                entry.name
                            ),
                        )
                        .label("unknown trained LoRA")
                        .help(help)
                        .into());
                }
                specs.push(LoraSpec {
                    source: LoraSource::Trained(name),
                    weight: lora.weight,
                    span: lora_span,
                });
                continue;
            }
            let path = written;
            // A path that names something other than a file is refused now: hashing a FIFO
            // or a device would never end. A missing file is named when the plan hashes it.
            let resolved = self.dir.join(path);
            if let Err(error) = crate::input_file::check(&resolved, MAX_LORA_BYTES, "LoRA file")
                && !matches!(error, InputFileError::Missing { .. })
            {
                return Err(self
                    .error(lora_span, format!("LoRA `{path}`: {error}"))
                    .label("not a LoRA file")
                    .help("name a .safetensors LoRA file, relative to the folder of sprites.ron")
                    .into());
            }
            if pixelgen_diffusion::files::is_pickle(Path::new(path)) {
                return Err(self
                    .error(
                        lora_span,
                        format!("LoRA `{path}` is a pickle file, which pixelgen refuses: loading one can run arbitrary code"),
                    )
                    .label("pickle")
                    .help("use the LoRA's .safetensors file; convert once in Python with `safetensors.torch.save_file(torch.load(path, weights_only=True), \"lora.safetensors\")`")
                    .into());
            }
            specs.push(LoraSpec {
                source: LoraSource::File {
                    resolved,
                    path: path.clone(),
                },
                weight: lora.weight,
                span: lora_span,
            });
        }
        Ok(specs)
    }

    /// The manifest's `trained_loras`: each name a LoRA sprites can use, each setting in
    /// range, the image folder a folder of PNGs.
    fn trained_loras(&self, raw: &RawManifest) -> Result<Vec<TrainedLoraSpec>, Invalid> {
        let section = self
            .locator
            .field_after(0, "trained_loras")
            .map_or(0, |f| f.end);
        let mut specs: Vec<TrainedLoraSpec> = Vec::new();
        for (occurrence_of, (name, lora)) in occurrences(&raw.trained_loras.0) {
            let span = self
                .locator
                .map_keys(name)
                .into_iter()
                .filter(|r| r.start >= section)
                .nth(occurrence_of)
                .unwrap_or(0..0);
            if occurrence_of > 0 {
                return Err(self
                    .error(span, format!("duplicate trained LoRA name `{name}`"))
                    .label("defined again here")
                    .help("trained LoRA names must be unique: rename one of them")
                    .into());
            }
            specs.push(self.trained_lora(name, lora, span)?);
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }

    fn trained_lora(
        &self,
        name: &str,
        raw: &RawTrainedLora,
        span: Range<usize>,
    ) -> Result<TrainedLoraSpec, Invalid> {
        let at = |field: &str| {
            self.locator
                .field_after(span.end, field)
                .map(|f| self.locator.value_after(&f))
                .unwrap_or(span.clone())
        };
        let refuse = |field: &str, message: String, label: &str, help: String| -> Invalid {
            self.error(at(field), format!("trained LoRA `{name}`: {message}"))
                .label(label)
                .help(help)
                .into()
        };
        let defaults = TrainingSettings::default();
        let images_dir = self.dir.join(&raw.images);
        match crate::input_file::non_file_kind(&images_dir) {
            Some(FileKind::Directory) => {}
            _ => {
                return Err(refuse(
                    "images",
                    format!("`{}` is not a folder", raw.images),
                    "not a folder of images",
                    "name the folder of PNG images (and NAME.txt captions) to train on, relative to the folder of sprites.ron".into(),
                ));
            }
        }
        if raw.model.trim().is_empty() {
            return Err(refuse(
                "model",
                "no base model".into(),
                "empty model",
                "name the model it is trained on, as a Diffusion generator does (usually the one its sprites draw with)".into(),
            ));
        }
        if pixelgen_diffusion::files::is_pickle(Path::new(&raw.model)) {
            return Err(refuse(
                "model",
                format!(
                    "model `{}` is a pickle checkpoint, which pixelgen refuses: loading one can run arbitrary code",
                    raw.model
                ),
                "pickle",
                "use the model's .safetensors file or a diffusers folder".into(),
            ));
        }
        let rank = raw.rank.unwrap_or(defaults.rank as u32);
        if !(1..=1024).contains(&rank) {
            return Err(refuse(
                "rank",
                format!("rank {rank} is out of range"),
                "rank",
                "use a rank from 1 to 1024 (4 to 32 is usual)".into(),
            ));
        }
        let alpha = raw.alpha.unwrap_or(f64::from(rank));
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(refuse(
                "alpha",
                format!("alpha {alpha} is not a positive number"),
                "alpha",
                "leave `alpha` out to use the rank, or give a positive number".into(),
            ));
        }
        let steps = raw.steps.unwrap_or(defaults.steps as u32);
        if !(1..=1_000_000).contains(&steps) {
            return Err(refuse(
                "steps",
                format!("{steps} training steps is out of range"),
                "steps",
                "use 1 to 1000000 steps (hundreds to a few thousand is usual)".into(),
            ));
        }
        let learning_rate = raw.learning_rate.unwrap_or(defaults.learning_rate);
        if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate < 1.0) {
            return Err(refuse(
                "learning_rate",
                format!("learning rate {learning_rate} is out of range"),
                "learning rate",
                "use a learning rate above 0 and below 1 (1e-4 is usual)".into(),
            ));
        }
        let batch = raw.batch.unwrap_or(defaults.batch as u32);
        if !(1..=256).contains(&batch) {
            return Err(refuse(
                "batch",
                format!("batch {batch} is out of range"),
                "batch",
                "use 1 to 256 images per step".into(),
            ));
        }
        if let Some((width, height)) = raw.resolution {
            let drawable =
                |side: u32| side.is_multiple_of(8) && (8..=MAX_RESOLUTION).contains(&side);
            if !drawable(width) || !drawable(height) {
                return Err(refuse(
                    "resolution",
                    format!("resolution {width}×{height} cannot be trained at"),
                    "not a multiple of 8 in range",
                    format!(
                        "each side is a multiple of 8 from 8 to {MAX_RESOLUTION}; leave it out to train at the model's own size"
                    ),
                ));
            }
        }
        let caption = raw.caption.clone().unwrap_or(defaults.caption);
        if caption.trim().is_empty() {
            return Err(refuse("caption", "the default caption is empty".into(), "empty", "give images without a NAME.txt a caption with a trigger word, e.g. `caption: \"pixel art sprite, mygame style\"`".into()));
        }
        let background = match &raw.background {
            None => defaults.background,
            Some(hex) => self.color(
                hex,
                &span,
                format!("trained LoRA `{name}`: background `{hex}` is not a colour"),
                "write the background as `background: \"#ffffff\"`",
            )?,
        };
        Ok(TrainedLoraSpec {
            name: LoraName::from(name),
            images: raw.images.clone(),
            images_dir,
            model: raw.model.clone(),
            settings: TrainingSettings {
                rank: rank as usize,
                alpha,
                steps: steps as usize,
                learning_rate,
                batch: batch as usize,
                resolution: raw.resolution,
                seed: raw.seed.unwrap_or(defaults.seed),
                caption,
                background,
                conv: raw.conv.unwrap_or(defaults.conv),
                text_encoder: raw.text_encoder.unwrap_or(defaults.text_encoder),
            },
            span,
        })
    }

    fn background(
        &self,
        entry: &SpriteEntry<'_>,
        background: Merged<&RawBackground>,
    ) -> Result<Background, Invalid> {
        Ok(match background.value {
            None | Some(RawBackground::Transparent) => Background::Transparent,
            Some(RawBackground::Keep) => Background::Keep,
            Some(RawBackground::Color(hex)) => Background::Color(self.color(
                hex,
                &entry.span,
                format!("`{hex}` is not a colour"),
                "write the colour as `Color(\"#3a5f0b\")`",
            )?),
        })
    }

    fn max_colors(
        &self,
        entry: &SpriteEntry<'_>,
        max_colors: Merged<u32>,
    ) -> Result<Option<u32>, Invalid> {
        if max_colors.value == Some(0) {
            return Err(self
                .error(
                    self.field_span(entry, "max_colors", &max_colors),
                    format!("sprite `{}`: `max_colors` must be at least 1", entry.name),
                )
                .label("zero colours")
                .help("leave `max_colors` out to keep every colour the image needs")
                .into());
        }
        Ok(max_colors.value)
    }

    /// A `#RRGGBB` colour; an error at the string (or the sprite) otherwise.
    fn color(
        &self,
        hex: &str,
        sprite: &Range<usize>,
        message: String,
        help: &str,
    ) -> Result<[u8; 3], Invalid> {
        parse_hex_color(hex).ok_or_else(|| {
            let at = self
                .locator
                .string_literals(hex)
                .into_iter()
                .next()
                .unwrap_or(sprite.clone());
            self.error(at, message)
                .label("expected #RRGGBB")
                .help(help)
                .into()
        })
    }

    /// A built-in palette name, or a `.hex` / `.gpl` file beside the manifest.
    fn palette(&self, name: &str, near: Option<&Range<usize>>) -> Result<Palette, Invalid> {
        let at = || {
            let literals = self.locator.string_literals(name);
            near.and_then(|n| literals.iter().find(|r| r.start >= n.end).cloned())
                .or_else(|| literals.into_iter().next())
                .unwrap_or(0..0)
        };
        if let Some(path) = Palette::file_of(name, self.dir) {
            // Even a missing or broken file must rerun the build when it changes.
            self.input_files.borrow_mut().push(path);
        }
        Palette::load(name, self.dir).map_err(|error| {
            let (label, help) = match &error {
                PaletteLoadError::Unreadable { .. } => (
                    "palette file",
                    "the path is relative to the folder of sprites.ron; check it exists".to_owned(),
                ),
                PaletteLoadError::Invalid { .. } => (
                    "this palette",
                    "a .hex file has one RRGGBB colour per line; a .gpl file is a GIMP palette"
                        .to_owned(),
                ),
                PaletteLoadError::Unknown { .. } => (
                    "not a built-in palette",
                    format!(
                        "use a built-in palette ({}) or a path to a .hex or .gpl file",
                        Palette::BUILTIN_NAMES.join(", ")
                    ),
                ),
            };
            self.error(at(), error.to_string())
                .label(label)
                .help(help)
                .into()
        })
    }

    fn identifier(
        &self,
        name: &str,
        span: &Range<usize>,
        what: &str,
        case: Case,
    ) -> Result<String, Invalid> {
        rust_identifier(name, case).ok_or_else(|| {
            self.error(span.clone(), format!("{what} name `{name}` cannot become a Rust identifier"))
                .label("invalid name")
                .help(format!("{what} names start with a letter and use only letters, digits, `_` and `-` (e.g. `hero_walk`); Rust keywords are not allowed"))
                .into()
        })
    }

    /// Where the `occurrence`-th (0-based) `"name":` key is; the whole file when not found.
    fn key_span(&self, name: &str, occurrence: usize) -> Range<usize> {
        self.locator
            .map_keys(name)
            .get(occurrence)
            .cloned()
            .unwrap_or(0..0)
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.source, span, message)
    }
}

/// Each entry with how many entries of the same name came before it.
pub(super) fn occurrences<T>(
    entries: &[(String, T)],
) -> impl Iterator<Item = (usize, &(String, T))> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    entries.iter().map(move |entry| {
        let count = counts.entry(entry.0.as_str()).or_insert(0);
        let before = *count;
        *count += 1;
        (before, entry)
    })
}

#[derive(Clone, Copy)]
pub(crate) enum Case {
    Upper,
    Lower,
}

/// `hero-walk` → `HERO_WALK` (Upper) or `hero_walk` (Lower); `None` when the name
/// cannot be a Rust identifier.
pub(crate) fn rust_identifier(name: &str, case: Case) -> Option<String> {
    let mut chars = name.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let converted: String = name
        .chars()
        .map(|c| match (c, case) {
            ('-', _) => '_',
            (c, Case::Upper) => c.to_ascii_uppercase(),
            (c, Case::Lower) => c.to_ascii_lowercase(),
        })
        .collect();
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum",
        "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod",
        "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait",
        "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do",
        "final", "macro", "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
    ];
    // Names the generated module uses itself.
    const RESERVED: &[&str] = &["atlases", "prelude"];
    if KEYWORDS.contains(&converted.to_ascii_lowercase().as_str()) && matches!(case, Case::Lower) {
        return None;
    }
    if matches!(case, Case::Lower) && RESERVED.contains(&converted.as_str()) {
        return None;
    }
    Some(converted)
}

/// Largest ComfyUI workflow file read.
const MAX_WORKFLOW_BYTES: u64 = 8 << 20;

/// Steps, guidance and draw resolution, shared by the Diffusion and Server generators.
fn sampling_settings(
    steps: u32,
    guidance: f32,
    resolution: Option<(u32, u32)>,
    refuse: &dyn Fn(&str, String, &str, String) -> Invalid,
) -> Result<(), Invalid> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(refuse(
            "steps",
            format!("{steps} diffusion steps is out of range"),
            "steps",
            format!("use 1 to {MAX_STEPS} steps (1–4 for Turbo models, 20–50 for others)"),
        ));
    }
    if !guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(refuse(
            "guidance",
            format!("guidance {guidance} is out of range"),
            "guidance",
            format!(
                "use a guidance scale from 0 to {MAX_GUIDANCE} (0 or 1 for Turbo models, 5–9 for others)"
            ),
        ));
    }
    if let Some((width, height)) = resolution {
        let drawable = |side: u32| side.is_multiple_of(8) && (8..=MAX_RESOLUTION).contains(&side);
        if !drawable(width) || !drawable(height) {
            return Err(refuse(
                "resolution",
                format!("resolution {width}×{height} cannot be drawn"),
                "not a multiple of 8 in range",
                format!(
                    "each side is a multiple of 8 from 8 to {MAX_RESOLUTION}, as diffusers requires (the latents are 1/8 of the image); e.g. `resolution: (512, 512)`"
                ),
            ));
        }
    }
    Ok(())
}
