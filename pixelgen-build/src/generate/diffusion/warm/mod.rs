//! A warm model between builds: `cargo pixelgen serve` keeps loaded Stable Diffusion
//! models in one long-lived process, and builds send it the frames they must draw over a
//! Unix socket (owner-only) instead of loading the model themselves.
//!
//! - [`protocol`]: the frames and messages (versioned; images as raw RGB8).
//! - `daemon` (features `diffusion` and `cli`): the server: socket, loaded models (LRU), the
//!   machine-wide device lock, one request at a time.
//! - [`client`]: the client, a `Generator` that falls back in-process.
//!
//! Invariants:
//! - The server is an accelerator, never an input: whether one runs is part of no key,
//!   and a build through it writes the same cache files and lock file as one without.
//! - The server draws with the same code as the in-process backend (the same settings,
//!   requests, batch composition and device request), and refuses clients of another
//!   version ([`protocol::Versions`]).
//! - The socket is reachable by its owner only: its folder is created 0700 and the
//!   socket is 0600.
//! - This module reads no environment: callers pass `PIXELGEN_SERVER`, `XDG_RUNTIME_DIR`
//!   and the temporary folder in (the build script declares each with
//!   `rerun-if-env-changed`).

pub mod client;
#[cfg(all(feature = "diffusion", feature = "cli"))]
pub mod daemon;
pub mod protocol;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where `cargo pixelgen serve` listens and builds look for it when `PIXELGEN_SERVER` does
/// not say: `$XDG_RUNTIME_DIR/pixelgen/serve.sock`, else `<temp>/pixelgen-<uid>/serve.sock`.
pub fn default_socket_path(xdg_runtime_dir: Option<&OsStr>, temp_dir: &Path) -> PathBuf {
    match xdg_runtime_dir.filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(dir).join("pixelgen").join("serve.sock"),
        None => temp_dir
            .join(format!("pixelgen-{}", current_uid()))
            .join("serve.sock"),
    }
}

/// The warm server a build should try, from the values of `PIXELGEN_SERVER` (a socket
/// path, or `off`) and `XDG_RUNTIME_DIR`, and the temporary folder. `None`: never use one.
pub fn server_from(
    pixelgen_server: Option<&OsStr>,
    xdg_runtime_dir: Option<&OsStr>,
    temp_dir: &Path,
) -> Option<WarmServer> {
    match pixelgen_server.filter(|v| !v.is_empty()) {
        Some(value) if value.eq_ignore_ascii_case("off") => None,
        Some(path) => Some(WarmServer::new(PathBuf::from(path), true)),
        None => Some(WarmServer::new(
            default_socket_path(xdg_runtime_dir, temp_dir),
            false,
        )),
    }
}

/// The warm server the environment names ([`server_from`] over its values).
pub fn server_for(environment: &crate::environment::Environment) -> Option<WarmServer> {
    server_from(
        environment.server.socket(),
        environment.server.runtime_dir(),
        &environment.temp_dir,
    )
}

/// Where a build looks for the warm server. Clones share whether it failed: a server that
/// failed once is not asked again in the same run.
#[derive(Debug, Clone)]
pub struct WarmServer {
    pub path: PathBuf,
    /// Named by the user (`PIXELGEN_SERVER`, `--server`): its absence is worth a note.
    pub explicit: bool,
    failed: Arc<AtomicBool>,
}

impl WarmServer {
    pub fn new(path: PathBuf, explicit: bool) -> WarmServer {
        WarmServer {
            path,
            explicit,
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The real user id of this process (folder names and ownership checks).
pub fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_variables_in_order() {
        let temp = Path::new("/tmp");
        let uid = current_uid();
        let default = server_from(None, None, temp).unwrap();
        assert_eq!(
            default.path,
            PathBuf::from(format!("/tmp/pixelgen-{uid}/serve.sock"))
        );
        assert!(!default.explicit);
        let runtime = server_from(None, Some(OsStr::new("/run/user/7")), temp).unwrap();
        assert_eq!(runtime.path, Path::new("/run/user/7/pixelgen/serve.sock"));
        let named = server_from(Some(OsStr::new("/x/s.sock")), None, temp).unwrap();
        assert_eq!(named.path, Path::new("/x/s.sock"));
        assert!(named.explicit);
        assert!(server_from(Some(OsStr::new("off")), None, temp).is_none());
        assert!(server_from(Some(OsStr::new("OFF")), None, temp).is_none());
    }

    #[test]
    fn clones_share_a_failure() {
        let server = WarmServer::new("/x".into(), false);
        let clone = server.clone();
        clone.mark_failed();
        assert!(server.has_failed());
    }
}
