//! The warm server: a Unix socket, the models it keeps loaded, and the request loop.
//!
//! Invariants:
//! - One request at a time (one device); other clients wait in the listen queue.
//! - The machine-wide [`DeviceLock`] is held exactly while at least one model is loaded,
//!   so in-process builds wait for the server as they wait for each other.
//! - A request that fails on the server's side (load, settings, sampling, another
//!   version) drops every model and the device lock *before* the error is sent: the
//!   client then generates in-process and must be able to take the device.
//! - A client that stalls while sending its request is cut off after
//!   `request_timeout`; nothing a client sends can panic the server or make it wait
//!   longer than that.
//! - Models are keyed by everything that decides their weights on the device: path,
//!   content hash, LoRAs (path, hash, weight), device and precision.
//! - The socket file is removed when the server stops (or is dropped), unless another
//!   server has replaced it since.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::generate::diffusion::candle_core::{DType, Device};
use pixelgen_diffusion::advisory::AdvisoryLock;

use super::protocol::{
    self, FrameError, GenerateRequest, Request, RequestHeader, Response, StatusReply, Versions,
};
use crate::generate::DeviceRequest;
use crate::generate::diffusion::Scheduler;
use crate::generate::diffusion::local::{conditioned_with, frame_images};
use crate::generate::diffusion::{
    ControlNet, DeviceLock, DiffusionError, LoadedModel, LoraFile, ModelLocation,
    Request as SampleRequest, batch_for, request_for, select_device_for, settings_for,
};
use crate::timings::{Stage, Timings};

/// How often the accept loop looks at its stop flag and idle timer.
const POLL: Duration = Duration::from_millis(20);

/// How `cargo pixelgen serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub socket: PathBuf,
    /// Drop the models (and the device lock) after this long without a request; `None`
    /// keeps them until the server stops.
    pub idle_timeout: Option<Duration>,
    /// Models kept loaded at once (least recently used goes first); at least 1.
    pub max_models: usize,
    /// The folder of the machine-wide device lock (the environment's `lock_dir`).
    pub lock_dir: PathBuf,
    /// The Hugging Face cache, where single files find their tokenizers.
    pub hub_cache: Option<PathBuf>,
    /// The longest a client may take to send its request.
    pub request_timeout: Duration,
    /// The longest a client may take to accept one message (it reads them promptly).
    pub write_timeout: Duration,
}

impl ServeOptions {
    pub fn new(socket: PathBuf, lock_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            socket,
            idle_timeout: Some(Duration::from_secs(15 * 60)),
            max_models: 1,
            lock_dir,
            hub_cache: None,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "a pixelgen server is already running at {}\nhelp: use it (builds find it there), stop it, or start this one with --socket PATH",
        path.display()
    )]
    AlreadyRunning { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Socket { path: PathBuf, message: String },
}

/// The socket file a server created, recognised by device and inode so that a server
/// removes only its own (not one a later server put at the same path).
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still this server's.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ModelKey {
    model: protocol::ModelRef,
    loras: Vec<protocol::LoraRef>,
    device: String,
    dtype: String,
}

struct Held {
    key: ModelKey,
    model: LoadedModel,
    /// ControlNets loaded for this model (its device and dtype), kept while it is held.
    controlnets: Vec<HeldControlNet>,
}

/// A loaded ControlNet and what its folder held when it was read: a folder whose files
/// changed (size or modification time) is read again.
struct HeldControlNet {
    path: PathBuf,
    files: Vec<(std::ffi::OsString, u64, std::time::SystemTime)>,
    controlnet: Arc<ControlNet>,
}

/// The files in `dir` with their sizes and modification times, by name; `None` when the
/// folder cannot be listed (then nothing is kept and the load reports why).
fn folder_files(dir: &Path) -> Option<Vec<(std::ffi::OsString, u64, std::time::SystemTime)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let meta = entry.metadata().ok()?;
        if meta.is_file() {
            files.push((entry.file_name(), meta.len(), meta.modified().ok()?));
        }
    }
    files.sort();
    Some(files)
}

/// A bound server; [`Server::run`] serves until [`Server::stop_flag`] is set.
pub struct Server {
    listener: UnixListener,
    socket: SocketFile,
    /// Held for the server's life: a second server at the same path cannot start.
    _instance: AdvisoryLock,
    options: ServeOptions,
    /// Least recently used first.
    models: Vec<Held>,
    device_lock: Option<DeviceLock>,
    /// Devices opened so far, by what was asked: a GPU's context (and the kernels it has
    /// compiled) is made once and reused.
    devices: Vec<((String, Option<String>), Device, DType)>,
    loads: u64,
    controlnet_loads: u64,
    requests: u64,
    last_timings: Timings,
    last_request: Instant,
    stop: Arc<AtomicBool>,
    log: Box<dyn FnMut(&str) + Send>,
}

impl Server {
    /// Creates the socket's folder (0700) if needed, refuses a path where a server runs,
    /// replaces a stale socket file, and listens (socket 0600).
    pub fn bind(options: ServeOptions) -> Result<Server, ServeError> {
        let path = options.socket.clone();
        let fail = |message: String| ServeError::Socket {
            path: path.clone(),
            message,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| fail(format!("cannot create its folder: {e}")))?;
        }
        let owner = std::fs::metadata(&dir)
            .map_err(|e| fail(format!("cannot read its folder: {e}")))?
            .uid();
        // Another user's folder could swap the socket for theirs.
        if owner != super::current_uid() && owner != 0 {
            return Err(fail(format!(
                "its folder {} belongs to another user (uid {owner}); choose a socket path in a folder of yours",
                dir.display()
            )));
        }
        let instance_path = lock_path_of(&path);
        let instance = match AdvisoryLock::try_acquire(&instance_path) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Err(ServeError::AlreadyRunning { path }),
            Err(e) => {
                return Err(fail(format!(
                    "cannot lock {}: {e}",
                    instance_path.display()
                )));
            }
        };
        let _ = std::fs::set_permissions(&instance_path, std::fs::Permissions::from_mode(0o600));
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if UnixStream::connect(&path).is_ok() {
                return Err(ServeError::AlreadyRunning { path });
            }
            if !meta.file_type().is_socket() {
                return Err(fail(
                    "a file that is not a socket is there; remove it or choose another path".into(),
                ));
            }
            // A socket nobody answers on: left by a server that was killed.
            std::fs::remove_file(&path)
                .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
        }
        // Bound under a temporary name, made owner-only, then moved into place: the
        // socket is never reachable at its real path with looser permissions.
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&temp);
        let listener =
            UnixListener::bind(&temp).map_err(|e| fail(format!("cannot listen: {e}")))?;
        let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temp);
            return Err(fail(format!("cannot set up the socket: {e}")));
        }
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| fail(format!("the socket vanished: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| fail(format!("cannot listen: {e}")))?;
        Ok(Server {
            listener,
            socket: SocketFile {
                path,
                dev: meta.dev(),
                ino: meta.ino(),
            },
            _instance: instance,
            options,
            models: Vec::new(),
            device_lock: None,
            devices: Vec::new(),
            loads: 0,
            controlnet_loads: 0,
            requests: 0,
            last_timings: Timings::new(),
            last_request: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            log: Box::new(|_| {}),
        })
    }

    /// Where the server listens, for a signal handler that must remove it.
    pub fn socket_file(&self) -> SocketFile {
        self.socket.clone()
    }

    /// Setting it makes [`Server::run`] return after the request in progress.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Where one line per event (load, request, idle release) goes.
    pub fn on_event(mut self, log: impl FnMut(&str) + Send + 'static) -> Server {
        self.log = Box::new(log);
        self
    }

    /// Serves requests, one at a time, until the stop flag is set; then removes the socket.
    pub fn run(mut self) -> Result<(), ServeError> {
        while !self.stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    self.serve(stream);
                    self.last_request = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(idle) = self.options.idle_timeout
                        && !self.models.is_empty()
                        && self.last_request.elapsed() >= idle
                    {
                        self.release();
                        (self.log)(&format!(
                            "idle for {} s: models dropped, device released",
                            idle.as_secs()
                        ));
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ServeError::Socket {
                        path: self.socket.path.clone(),
                        message: format!("accept failed: {e}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The device and precision for a request, opened once.
    fn device(&mut self, asked: &DeviceRequest) -> Result<(Device, DType), DiffusionError> {
        let key = (asked.device.trim().to_string(), asked.dtype.clone());
        if let Some((_, device, dtype)) = self.devices.iter().find(|(k, _, _)| *k == key) {
            return Ok((device.clone(), *dtype));
        }
        let (device, dtype, _) = select_device_for(asked)?;
        self.devices.push((key, device.clone(), dtype));
        Ok((device, dtype))
    }

    /// Drops every model, then the device lock.
    fn release(&mut self) {
        self.models.clear();
        self.device_lock = None;
    }

    fn serve(&mut self, mut stream: UnixStream) {
        let deadline = Instant::now() + self.options.request_timeout;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(self.options.write_timeout));
        let header = match read_request(&mut stream, deadline) {
            Ok(header) => header,
            Err(message) => {
                (self.log)(&format!("bad request: {message}"));
                send(&mut stream, &Response::Error { message });
                return;
            }
        };
        let versions = header
            .get("versions")
            .cloned()
            .and_then(|v| serde_json::from_value::<Versions>(v).ok());
        let refusal = match &versions {
            Some(theirs) => Versions::ours().refuse(theirs),
            None => Some(
                "the request has no versions: restart `cargo pixelgen serve` with the pixelgen that builds this game".to_string(),
            ),
        };
        if let Some(message) = refusal {
            // The client will generate in-process and needs the device.
            self.release();
            (self.log)(&format!("refused a client: {message}"));
            send(&mut stream, &Response::Error { message });
            return;
        }
        let request = match serde_json::from_value::<RequestHeader>(header) {
            Ok(header) => header.request,
            Err(e) => {
                let message = format!("malformed request: {e}");
                (self.log)(&message);
                send(&mut stream, &Response::Error { message });
                return;
            }
        };
        match request {
            Request::Status { device } => {
                let batch = match device {
                    Some(asked) => match self.device(&asked) {
                        Ok((device, _)) => Some(batch_for(&device, asked.batch)),
                        Err(e) => {
                            // The client will generate in-process and needs the device.
                            self.release();
                            send(
                                &mut stream,
                                &Response::Error {
                                    message: e.to_string(),
                                },
                            );
                            return;
                        }
                    },
                    None => None,
                };
                let reply = StatusReply {
                    versions: Versions::ours(),
                    pid: std::process::id(),
                    loads: self.loads,
                    controlnet_loads: self.controlnet_loads,
                    requests: self.requests,
                    models: self.models.iter().map(|h| describe(&h.key)).collect(),
                    batch,
                    last_timings: self.last_timings.clone(),
                };
                send(&mut stream, &Response::Status(reply));
            }
            Request::Generate(request) => {
                self.requests += 1;
                let started = Instant::now();
                match self.generate(&mut stream, &request) {
                    Ok(timings) => {
                        (self.log)(&format!(
                            "drew {} image(s) in {:.2} s",
                            request.jobs.len(),
                            started.elapsed().as_secs_f64()
                        ));
                        self.last_timings = timings.clone();
                        send(&mut stream, &Response::Done { timings });
                    }
                    Err(Failure::Client(e)) => {
                        (self.log)(&format!("the client went away: {e}"));
                    }
                    Err(Failure::Server(message)) => {
                        self.release();
                        (self.log)(&format!("request failed: {message}"));
                        send(&mut stream, &Response::Error { message });
                    }
                }
            }
        }
    }

    fn generate(
        &mut self,
        stream: &mut UnixStream,
        request: &GenerateRequest,
    ) -> Result<Timings, Failure> {
        let server = |message: String| Failure::Server(message);
        let scheduler = Scheduler::from_name(&request.scheduler)
            .ok_or_else(|| server(format!("unknown scheduler `{}`", request.scheduler)))?;
        let (device, dtype) = self
            .device(&request.device)
            .map_err(|e| server(e.to_string()))?;
        let key = ModelKey {
            model: request.model.clone(),
            loras: request.loras.clone(),
            device: format!("{:?}", device.location()),
            dtype: dtype_name(dtype).to_string(),
        };
        let mut timings = Timings::new();
        let held = match self.models.iter().position(|h| h.key == key) {
            Some(i) => {
                let held = self.models.remove(i);
                self.models.push(held);
                self.models.len() - 1
            }
            None => {
                // Free memory before loading the next model.
                while self.models.len() >= self.options.max_models.max(1) {
                    self.models.remove(0);
                }
                let started = Instant::now();
                if self.device_lock.is_none() {
                    self.device_lock = Some(
                        DeviceLock::acquire(&self.options.lock_dir)
                            .map_err(|e| server(e.to_string()))?,
                    );
                }
                let location = if request.model.single_file {
                    ModelLocation::SingleFile(request.model.path.clone())
                } else {
                    ModelLocation::Folder(request.model.path.clone())
                };
                let loras: Vec<LoraFile> = request
                    .loras
                    .iter()
                    .map(|l| LoraFile {
                        path: l.path.clone(),
                        weight: f64::from(f32::from_bits(l.weight_bits)),
                    })
                    .collect();
                let model = LoadedModel::load(
                    &location,
                    &loras,
                    &device,
                    dtype,
                    self.options.hub_cache.as_deref(),
                )
                .map_err(|e| server(e.to_string()))?;
                self.loads += 1;
                let took = started.elapsed();
                (self.log)(&format!(
                    "loaded {} in {:.2} s",
                    describe(&key),
                    took.as_secs_f64()
                ));
                timings.add(Stage::Load, took);
                self.models.push(Held {
                    key,
                    model,
                    controlnets: Vec::new(),
                });
                self.models.len() - 1
            }
        };
        let Held {
            model, controlnets, ..
        } = &mut self.models[held];
        let settings = settings_for(
            model,
            request.resolution,
            request.steps,
            f32::from_bits(request.guidance_bits),
            scheduler,
        )
        .map_err(|e| server(e.to_string()))?;
        let log = &mut self.log;
        let controlnet_loads = &mut self.controlnet_loads;
        let settings = conditioned_with(settings, &request.conditioning, |spec| {
            let files = folder_files(&spec.resolved);
            if let Some(held) = controlnets
                .iter()
                .find(|h| h.path == spec.resolved && Some(&h.files) == files.as_ref())
            {
                return Ok(held.controlnet.clone());
            }
            let started = Instant::now();
            let controlnet = Arc::new(ControlNet::load(
                &spec.resolved,
                model.device(),
                model.dtype(),
            )?);
            *controlnet_loads += 1;
            log(&format!(
                "loaded ControlNet {} in {:.2} s",
                spec.resolved.display(),
                started.elapsed().as_secs_f64()
            ));
            controlnets.retain(|h| h.path != spec.resolved);
            if let Some(files) = files {
                controlnets.push(HeldControlNet {
                    path: spec.resolved.clone(),
                    files,
                    controlnet: controlnet.clone(),
                });
            }
            Ok(controlnet)
        })
        .and_then(|settings| model.check(&settings).map(|()| settings))
        .map_err(|e| server(e.to_string()))?;
        let model = &*model;
        let size = (settings.width as u32, settings.height as u32);
        let batch = batch_for(&device, request.device.batch);
        for (chunk_index, chunk) in request.jobs.chunks(batch).enumerate() {
            let requests = chunk
                .iter()
                .map(|job| {
                    let (init, control_images) = frame_images(&job.conditioning, size)?;
                    Ok(SampleRequest {
                        init,
                        control_images,
                        ..request_for(&job.prompt, &job.negative_prompt, job.seed)
                    })
                })
                .collect::<Result<Vec<SampleRequest>, DiffusionError>>()
                .map_err(|e| server(e.to_string()))?;
            let images = model
                .generate_timed(&settings, &requests, &mut timings)
                .map_err(|e| server(e.to_string()))?;
            for (offset, image) in images.into_iter().enumerate() {
                let header = Response::Image {
                    index: chunk_index * batch + offset,
                    width: image.width(),
                    height: image.height(),
                };
                protocol::write_frame(stream, &header, image.as_raw()).map_err(Failure::Client)?;
            }
        }
        Ok(timings)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.socket.remove();
    }
}

/// The file a running server keeps locked beside its socket.
fn lock_path_of(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    socket.with_file_name(name)
}

enum Failure {
    /// Writing to the client failed: it is gone; the models stay.
    Client(io::Error),
    /// The server could not do what was asked.
    Server(String),
}

/// Reads the request header as JSON (checked for versions before its shape), before
/// `deadline`.
fn read_request(stream: &mut UnixStream, deadline: Instant) -> Result<serde_json::Value, String> {
    let mut reader = DeadlineReader { stream, deadline };
    let (header, _payload) = protocol::read_raw_frame(&mut reader).map_err(|e| match e {
        FrameError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            "the request did not arrive in time".to_string()
        }
        other => format!("malformed request: {other}"),
    })?;
    serde_json::from_slice(&header).map_err(|e| format!("malformed request: {e}"))
}

/// Reads with a read timeout that shrinks to the time left before a deadline, so a
/// client that sends a byte now and then still cannot hold the server.
struct DeadlineReader<'a> {
    stream: &'a mut UnixStream,
    deadline: Instant,
}

impl io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Sends a message; a client that is gone is not the server's problem.
fn send(stream: &mut UnixStream, response: &Response) {
    let _ = protocol::write_frame(stream, response, &[]);
    let _ = stream.flush();
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

fn describe(key: &ModelKey) -> String {
    let mut text = format!(
        "{} ({}, {})",
        key.model.path.display(),
        key.device,
        key.dtype
    );
    for lora in &key.loras {
        text.push_str(&format!(
            " + {} × {}",
            lora.path.display(),
            f32::from_bits(lora.weight_bits)
        ));
    }
    text
}
