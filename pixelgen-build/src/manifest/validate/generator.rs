//! The generator field: the manifest owns its syntax (`Diffusion(...)`, `Server(...)`),
//! each backend owns its checks (`DiffusionSpec::check`, `ServerSpec::check`); a setting a
//! backend refuses is located here, inside the generator that wrote it.

use crate::generate::GeneratorSpec;
use crate::generate::diffusion::{DiffusionSettings, DiffusionSpec};
use crate::generate::image_servers::{ServerSettings, ServerSpec};
use crate::generate::settings::{Refusal, SettingsContext};
use crate::manifest::merge::Merged;
use crate::manifest::raw::RawGenerator;

use super::{Invalid, SpriteEntry, Validator};

impl Validator<'_> {
    pub(super) fn generator(
        &self,
        entry: &SpriteEntry<'_>,
        generator: Merged<&RawGenerator>,
    ) -> Result<GeneratorSpec, Invalid> {
        let Some(raw) = generator.value else {
            return Ok(GeneratorSpec::Procedural);
        };
        let context = SettingsContext::new(self.dir, &self.input_files);
        let checked = match raw {
            RawGenerator::Procedural => Ok(GeneratorSpec::Procedural),
            RawGenerator::Diffusion {
                model,
                steps,
                guidance,
                scheduler,
                resolution,
            } => DiffusionSpec::check(
                DiffusionSettings {
                    model,
                    steps: *steps,
                    guidance: *guidance,
                    scheduler: *scheduler,
                    resolution: *resolution,
                },
                &context,
            )
            .map(GeneratorSpec::Diffusion),
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
            } => ServerSpec::check(
                ServerSettings {
                    urls: url.list(),
                    kind: *kind,
                    model: model.as_deref(),
                    steps: *steps,
                    guidance: *guidance,
                    scheduler: scheduler.as_deref(),
                    resolution: *resolution,
                    workflow: workflow.as_deref(),
                    inputs: inputs.as_ref(),
                },
                &context,
            )
            .map(|spec| GeneratorSpec::Server(Box::new(spec))),
        };
        checked.map_err(|refusal| self.locate(entry, &generator, refusal))
    }

    /// A backend's refusal as a diagnostic pointing inside the `Diffusion(...)` or
    /// `Server(...)` that wrote the setting.
    fn locate(
        &self,
        entry: &SpriteEntry<'_>,
        generator: &Merged<&RawGenerator>,
        refusal: Refusal,
    ) -> Invalid {
        let generator_at = self.field_span(entry, "generator", generator);
        let field_at = || {
            self.locator
                .field_after(generator_at.start, refusal.field)
                .filter(|f| f.start < generator_at.end)
                .map(|f| self.locator.value_after(&f))
                .unwrap_or(generator_at.clone())
        };
        let at = refusal
            .literal
            .as_deref()
            .and_then(|literal| {
                self.locator
                    .string_literals(literal)
                    .into_iter()
                    .find(|r| r.start >= generator_at.start && r.end <= generator_at.end)
            })
            .unwrap_or_else(field_at);
        self.error(at, refusal.message)
            .label(refusal.label)
            .help(refusal.help)
            .into()
    }
}
