//! Loopback ports: a free one, and waiting until something listens on one.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that nothing listened on a moment ago (the system's pick).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Waits until 127.0.0.1:`port` accepts connections; `false` when it did not `within`.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !listening(port) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Whether something accepts connections on 127.0.0.1:`port`. A port in the ephemeral
/// range that nothing listens on can still "accept": Linux may give the connecting socket
/// that very port as its own, and the connection meets itself (TCP simultaneous open).
/// Such a connection is not a listener.
fn listening(port: u16) -> bool {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream.local_addr().ok() != stream.peer_addr().ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_found_and_a_closed_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(wait_for_port(port, Duration::from_secs(5)));
        drop(listener);
        // Port 1 (tcpmux) is privileged and outside the ephemeral range: nothing listens
        // there, and nothing is handed it meanwhile. A port that was free a moment ago can
        // be: the system gives it to the next process that binds port 0 (this assertion,
        // written with `free_port()`, failed twice in .ci/run's test phase).
        assert!(!wait_for_port(1, Duration::from_millis(300)));
        assert_ne!(free_port(), 0);
    }
}
