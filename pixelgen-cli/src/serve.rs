//! `cargo pixelgen serve`: keeps Stable Diffusion models loaded between builds.

use std::path::PathBuf;
use std::time::Duration;

use pixelgen_build::Environment;
use pixelgen_build::generate::diffusion::warm::client;
use pixelgen_build::generate::diffusion::warm::daemon::{ServeOptions, Server};

#[derive(clap::Args)]
pub struct Serve {
    /// The socket to listen on. Default: PIXELGEN_SERVER, else
    /// $XDG_RUNTIME_DIR/pixelgen/serve.sock, else <temp>/pixelgen-<uid>/serve.sock
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Drop the models and release the device after this many seconds without a request
    /// (0: never)
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    idle_timeout: u64,
    /// Models kept loaded at once (the least recently used is dropped first)
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_models: u64,
    /// Print the running server's state as JSON (models held, loads so far) and exit
    #[arg(long)]
    status: bool,
}

/// The socket path: `--socket`, else where builds look (`off` does not apply here).
fn socket_path(socket: Option<PathBuf>, environment: &Environment) -> PathBuf {
    socket.unwrap_or_else(|| {
        match pixelgen_build::generate::diffusion::warm::server_for(environment) {
            Some(server) => server.path,
            None => pixelgen_build::generate::diffusion::warm::default_socket_path(
                environment.server.runtime_dir(),
                &environment.temp_dir,
            ),
        }
    })
}

pub fn run(args: Serve, environment: &Environment) -> Result<(), String> {
    let path = socket_path(args.socket, environment);
    if args.status {
        let reply = client::status(&path, None)
            .map_err(|e| format!("the pixelgen server at {}: {e}", path.display()))?;
        let text = serde_json::to_string_pretty(&reply).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    let options = ServeOptions {
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        max_models: args.max_models as usize,
        hub_cache: environment.hub.cache_dir.clone(),
        ..ServeOptions::new(path, environment.lock_dir.clone())
    };
    let server = Server::bind(options)
        .map_err(|e| e.to_string())?
        .on_event(|line| eprintln!("pixelgen serve: {line}"));
    let socket = server.socket_file();
    // Ctrl-C, SIGTERM, SIGHUP: remove the socket so builds stop trying it, and exit
    // (a request in progress ends; its client draws in-process).
    let on_signal = socket.clone();
    ctrlc::set_handler(move || {
        on_signal.remove();
        eprintln!("pixelgen serve: stopped");
        std::process::exit(0);
    })
    .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    eprintln!(
        "pixelgen serve: listening on {} (pid {}); builds and `cargo pixelgen generate` send their Stable Diffusion frames here while it runs. Ctrl-C stops it.",
        socket.path().display(),
        std::process::id()
    );
    server.run().map_err(|e| e.to_string())
}
