//! Child processes: `cargo pixelgen` with none of the developer's pixelgen settings, a
//! finished one's failure with its output, a child killed when the test ends, its output
//! line by line, and waiting for a line or for a file it makes (a socket).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The variables through which a developer's shell or CI changes what pixelgen does: a
/// shared cache folder, offline builds, a warm server, CI's refusals.
pub const PIXELGEN_SETTINGS: [&str; 4] = [
    "PIXELGEN_CACHE_DIR",
    "PIXELGEN_OFFLINE",
    "PIXELGEN_SERVER",
    "CI",
];

/// Removes [`PIXELGEN_SETTINGS`] from `command`'s environment, so that pixelgen (run by
/// it, or by what it runs) works with its defaults.
pub fn without_pixelgen_settings(command: &mut Command) -> &mut Command {
    for name in PIXELGEN_SETTINGS {
        command.env_remove(name);
    }
    command
}

/// `cargo pixelgen` as cargo runs it (`binary pixelgen …`), without the developer's
/// [`PIXELGEN_SETTINGS`]. `binary` is the test's `env!("CARGO_BIN_EXE_cargo-pixelgen")`.
pub fn cargo_pixelgen(binary: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(binary);
    command.arg("pixelgen");
    without_pixelgen_settings(&mut command);
    command
}

/// Panics with the process's stderr (and stdout) unless it exited successfully.
#[track_caller]
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A child process that is killed, and waited for, when this is dropped: a failing test
/// leaves nothing running. It derefs to the [`Child`].
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of `stream` (a child's stdout or stderr) as they come, read on a thread of
/// their own.
pub fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// Waits for a line containing `text`: returns the lines that came until then, that one
/// last. Panics with them when none came `within`.
pub fn wait_for_line(lines: &Receiver<String>, text: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(text);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {text:?} within {within:?}; got {seen:#?}");
}

/// Waits until `path` exists (a socket `child` makes, say); an error when `child` exits
/// first or `within` passes.
pub fn wait_for_file(path: &Path, child: &mut Child, within: Duration) -> Result<(), String> {
    let started = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "exited with {status} before {} was there",
                path.display()
            ));
        }
        if started.elapsed() >= within {
            return Err(format!("no {} within {within:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn lines_come_until_the_awaited_one() {
        let mut child = KillOnDrop(
            Command::new("sh")
                .args(["-c", "echo one; echo two; echo three"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let lines = lines_of(child.stdout.take().unwrap());
        assert_eq!(
            wait_for_line(&lines, "tw", Duration::from_secs(10)),
            ["one", "two"]
        );
        assert_eq!(
            wait_for_line(&lines, "three", Duration::from_secs(10)),
            ["three"]
        );
    }

    #[test]
    fn a_file_is_awaited_until_the_child_exits() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        let mut child = Command::new("touch").arg(&made).spawn().unwrap();
        assert_eq!(
            wait_for_file(&made, &mut child, Duration::from_secs(10)),
            Ok(())
        );
        let never = dir.path().join("never");
        let error = wait_for_file(&never, &mut child, Duration::from_secs(10)).unwrap_err();
        assert!(error.starts_with("exited with"), "{error}");
    }

    #[test]
    fn a_failure_shows_the_output() {
        let ok = Command::new("true").output().unwrap();
        assert_success(&ok);
        let failed = Command::new("sh")
            .args(["-c", "echo why >&2; exit 3"])
            .output()
            .unwrap();
        let panic = std::panic::catch_unwind(|| assert_success(&failed)).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("why") && message.contains('3'),
            "{message}"
        );
    }

    #[test]
    fn pixelgen_settings_are_removed() {
        let mut command = cargo_pixelgen("cargo-pixelgen");
        command.env("PIXELGEN_SERVER", "off");
        let set: Vec<_> = command.get_envs().collect();
        assert!(set.contains(&(OsStr::new("PIXELGEN_SERVER"), Some(OsStr::new("off")))));
        assert!(set.contains(&(OsStr::new("CI"), None)));
        assert_eq!(command.get_args().collect::<Vec<_>>(), ["pixelgen"]);
    }
}
