//! The warm server's client: a [`Generator`] that sends a Diffusion group's frames to the
//! server and, when there is no server or it fails, draws them in-process as before.
//!
//! Invariants:
//! - Same pixels either way: the client sends what the in-process backend would use
//!   (model, LoRAs with their weights' bits, settings, device request), one request per
//!   batch of the server's batch size (the in-process batch size for that device), so
//!   the server's batches are the in-process batches.
//! - A request's images are used only when all of them arrived: when the server fails
//!   mid-request, that whole batch and everything after it are drawn in-process (a
//!   partial batch drawn again as a smaller one could differ on a GPU).
//! - After a failure the server is not asked again in this run ([`WarmServer`] clones
//!   share the flag), and the summary gets one note saying so.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::RgbaImage;

use super::WarmServer;
use super::protocol::{
    self, GenerateRequest, JobRef, LoraRef, ModelRef, Request, RequestHeader, Response,
    StatusReply, Versions,
};
use crate::environment::{DeviceRequest, Environment};
use crate::generate::batched::Generator;
use crate::generate::diffusion::{DiffusionSpec, load_local, model_files};
use crate::generate::{
    Conditioning, Frame, GenerateError, GroupInputs, ResolvedLora, Workshop, frame_seed,
};
use crate::identity::SpriteName;
use crate::key::InputFile;
use crate::timings::Timings;

/// The longest a send to the server may block (it reads requests at once when idle).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The generator for a group of `spec`'s frames: through the warm server when the
/// workshop names one, it answers and the plan has what the server checks; else
/// in-process.
pub fn open(
    spec: &DiffusionSpec,
    group: &GroupInputs<'_>,
    workshop: &Workshop,
    timings: &mut Timings,
) -> Result<Box<dyn Generator>, GenerateError> {
    let (manifest_dir, environment) = (&workshop.manifest_dir, &workshop.environment);
    let server = workshop.warm_server.as_ref().filter(|s| !s.has_failed());
    let template = server.and_then(|_| template(spec, group, manifest_dir, environment));
    let (Some(server), Some(template)) = (server, template) else {
        return load_local(
            spec,
            group.sprite,
            group.loras,
            group.conditioning,
            manifest_dir,
            environment,
            timings,
        );
    };
    let mut generator = WithFallback {
        remote: None,
        local: None,
        spec: spec.clone(),
        sprite: group.sprite.clone(),
        loras: group.loras.to_vec(),
        conditioning: group.conditioning.clone(),
        manifest_dir: manifest_dir.clone(),
        environment: environment.clone(),
        notes: Vec::new(),
    };
    match Remote::connect(server, template, manifest_dir) {
        Ok(remote) => generator.remote = Some(remote),
        Err(Connect::Unreachable(e)) => {
            // Not asked again this run. The default address without a server is the
            // normal case; a named one is not.
            server.mark_failed();
            if server.explicit {
                generator.notes.push(format!(
                    "pixelgen: no warm server answers at {} ({e}); generated in-process",
                    server.path.display()
                ));
            }
            generator.load_local(timings)?;
        }
        Err(Connect::Failed(message)) => {
            generator.server_failed(server, &message);
            generator.load_local(timings)?;
        }
    }
    Ok(Box::new(generator))
}

/// The request for `spec`'s group, without jobs; `None` when the plan lacks a hash or the
/// model cannot be found (the in-process backend then says why).
fn template(
    spec: &DiffusionSpec,
    group: &GroupInputs<'_>,
    manifest_dir: &Path,
    environment: &Environment,
) -> Option<GenerateRequest> {
    let DiffusionSpec {
        model,
        steps,
        guidance,
        scheduler,
        resolution,
    } = spec;
    let location =
        model_files::locate(model, manifest_dir, environment.hub.cache_dir.as_deref()).ok()?;
    let loras = group
        .loras
        .iter()
        .map(|lora| {
            Some(LoraRef {
                path: std::path::absolute(&lora.file).ok()?,
                weight_bits: lora.weight.to_bits(),
                hash: lora.hash.clone(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(GenerateRequest {
        model: ModelRef {
            path: std::path::absolute(location.path()).ok()?,
            single_file: matches!(location, model_files::ModelLocation::SingleFile(_)),
            hash: group.files.get(&InputFile::Model(model.clone()))?.clone(),
        },
        loras,
        device: environment.device.clone(),
        resolution: *resolution,
        steps: *steps,
        guidance_bits: guidance.to_bits(),
        scheduler: scheduler.name().to_string(),
        conditioning: group.conditioning.absolute(manifest_dir),
        jobs: Vec::new(),
    })
}

/// The warm server for one group of sprites, falling back to an in-process backend.
struct WithFallback {
    remote: Option<Remote>,
    local: Option<Box<dyn Generator>>,
    spec: DiffusionSpec,
    sprite: SpriteName,
    loras: Vec<ResolvedLora>,
    conditioning: Conditioning,
    manifest_dir: PathBuf,
    environment: Environment,
    notes: Vec<String>,
}

impl WithFallback {
    fn load_local(
        &mut self,
        timings: &mut Timings,
    ) -> Result<&mut Box<dyn Generator>, GenerateError> {
        if self.local.is_none() {
            self.local = Some(load_local(
                &self.spec,
                &self.sprite,
                &self.loras,
                &self.conditioning,
                &self.manifest_dir,
                &self.environment,
                timings,
            )?);
        }
        Ok(self.local.as_mut().expect("just set"))
    }

    fn server_failed(&mut self, server: &WarmServer, message: &str) {
        server.mark_failed();
        self.remote = None;
        self.notes.push(format!(
            "pixelgen: the warm server at {} failed ({message}); generated in-process",
            server.path.display()
        ));
    }
}

impl std::fmt::Display for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connect::Unreachable(e) => write!(f, "no server answers there: {e}"),
            Connect::Failed(message) => f.write_str(message),
        }
    }
}

impl Generator for WithFallback {
    fn generate(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, GenerateError> {
        if let Some(remote) = &mut self.remote {
            match remote.generate(frames, timings) {
                Ok(images) => return Ok(images),
                Err(message) => {
                    let server = remote.server.clone();
                    self.server_failed(&server, &message);
                }
            }
        }
        self.load_local(timings)?.generate(frames, timings)
    }

    fn batch_size(&self) -> usize {
        match (&self.remote, &self.local) {
            (Some(remote), _) => remote.batch,
            (None, Some(local)) => local.batch_size(),
            (None, None) => 1,
        }
    }

    fn take_note(&mut self) -> Option<String> {
        if !self.notes.is_empty() {
            return Some(self.notes.remove(0));
        }
        self.local.as_mut().and_then(|local| local.take_note())
    }
}

/// The state of the server at `path` (`cargo pixelgen serve --status`); with `device`,
/// also its batch size for that device request. Refuses a server of another version.
pub fn status(path: &Path, device: Option<DeviceRequest>) -> Result<StatusReply, Connect> {
    let mut stream = UnixStream::connect(path).map_err(Connect::Unreachable)?;
    match exchange(&mut stream, Request::Status { device }) {
        Ok(Response::Status(reply)) => match reply.versions.refuse(&Versions::ours()) {
            Some(why) => Err(Connect::Failed(why)),
            None => Ok(reply),
        },
        Ok(Response::Error { message }) => Err(Connect::Failed(message)),
        Ok(other) => Err(Connect::Failed(format!(
            "it answered a status request with {other:?}"
        ))),
        Err(message) => Err(Connect::Failed(message)),
    }
}

/// Why the server could not be asked.
#[derive(Debug)]
pub enum Connect {
    /// Nothing listens there (no server running): not worth a note by default.
    Unreachable(std::io::Error),
    /// Something answered but cannot serve this build.
    Failed(String),
}

/// One group's connection details to the server.
struct Remote {
    server: WarmServer,
    template: GenerateRequest,
    /// The server's batch size for this device request.
    batch: usize,
    /// Where the frames' relative image paths start (the server gets them absolute).
    manifest_dir: PathBuf,
}

impl Remote {
    /// Asks the server for its state: it answers at once (or after the request it is
    /// serving), checks the versions, and says its batch size for this device.
    fn connect(
        server: &WarmServer,
        template: GenerateRequest,
        manifest_dir: &Path,
    ) -> Result<Remote, Connect> {
        let reply = status(&server.path, Some(template.device.clone()))?;
        Ok(Remote {
            server: server.clone(),
            template,
            batch: reply.batch.unwrap_or(1).max(1),
            manifest_dir: manifest_dir.to_path_buf(),
        })
    }

    /// Draws `frames` on the server: all of their images, or an error saying why not. The
    /// server's stage times (its model load, text encoding, UNet steps, VAE decode) are
    /// merged into `timings`.
    fn generate(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, String> {
        let mut request = self.template.clone();
        request.jobs = frames
            .iter()
            .map(|frame| JobRef {
                prompt: frame.prompt.to_owned(),
                negative_prompt: frame.negative_prompt.to_owned(),
                seed: frame_seed(frame.seed, frame.frame),
                conditioning: frame.conditioning.absolute(&self.manifest_dir),
            })
            .collect();
        let mut stream =
            UnixStream::connect(&self.server.path).map_err(|e| format!("cannot connect: {e}"))?;
        send(&mut stream, Request::Generate(Box::new(request)))?;
        let mut images = Vec::with_capacity(frames.len());
        loop {
            let (response, payload) =
                protocol::read_frame::<Response>(&mut stream).map_err(|e| {
                    format!(
                        "the connection broke after {} of {} images: {e}",
                        images.len(),
                        frames.len()
                    )
                })?;
            match response {
                Response::Image {
                    index,
                    width,
                    height,
                } => {
                    if index != images.len() || index >= frames.len() {
                        return Err(format!(
                            "it sent image {index} when image {} of {} was due",
                            images.len(),
                            frames.len()
                        ));
                    }
                    let rgb =
                        image::RgbImage::from_raw(width, height, payload).ok_or_else(|| {
                            format!("image {index} is not {width}×{height} RGB pixels")
                        })?;
                    // As the in-process backend converts its images.
                    images.push(image::DynamicImage::ImageRgb8(rgb).into_rgba8());
                }
                Response::Done { timings: server } if images.len() == frames.len() => {
                    timings.merge(&server);
                    return Ok(images);
                }
                Response::Done { .. } => {
                    return Err(format!(
                        "it sent {} images for {} jobs",
                        images.len(),
                        frames.len()
                    ));
                }
                Response::Error { message } => return Err(message),
                Response::Status(_) => return Err("it answered with its status".into()),
            }
        }
    }
}

fn send(stream: &mut UnixStream, request: Request) -> Result<(), String> {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let header = RequestHeader {
        versions: Versions::ours(),
        request,
    };
    protocol::write_frame(stream, &header, &[]).map_err(|e| format!("cannot send the request: {e}"))
}

/// Sends one request and reads the first answer.
fn exchange(stream: &mut UnixStream, request: Request) -> Result<Response, String> {
    send(stream, request)?;
    protocol::read_frame::<Response>(stream)
        .map(|(response, _)| response)
        .map_err(|e| format!("no answer: {e}"))
}
