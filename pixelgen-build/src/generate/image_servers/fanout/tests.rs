//! The fan-out's scheduling, against in-memory servers: the timing cases (a server dying
//! with work queued, a failing item, a busy queue) cannot be arranged reliably with real
//! servers. The real-InvokeAI test (`tests/tests/servers.rs`) covers the same paths end to end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::generate::image_servers::Endpoint;

/// What a fake server did, shared with the test.
#[derive(Default)]
struct Log {
    /// Frames each server drew.
    drawn: Vec<Vec<usize>>,
    cancelled: Vec<bool>,
}

struct FakeServer {
    index: usize,
    endpoint: Endpoint,
    log: Arc<Mutex<Log>>,
    queue: VecDeque<usize>,
    /// Dies (stops answering) after drawing this many frames.
    dies_after: Option<usize>,
    /// Frames it reports as failed.
    fails: Vec<usize>,
    /// Other clients' work in its queue.
    foreign: usize,
    /// Frames finished per poll.
    speed: usize,
    dead: bool,
    /// Every submission is answered with this HTTP status.
    refuses_with: Option<u16>,
}

impl FakeServer {
    fn new(index: usize, log: &Arc<Mutex<Log>>) -> FakeServer {
        log.lock().unwrap().drawn.push(Vec::new());
        log.lock().unwrap().cancelled.push(false);
        FakeServer {
            index,
            endpoint: Endpoint::parse(&format!("http://127.0.0.1:{}", 9000 + index)).unwrap(),
            log: log.clone(),
            queue: VecDeque::new(),
            dies_after: None,
            fails: Vec::new(),
            foreign: 0,
            speed: 1,
            dead: false,
            refuses_with: None,
        }
    }

    fn down(&self) -> HttpError {
        HttpError::Transport {
            endpoint: self.endpoint.to_string(),
            source: Box::<dyn std::error::Error + Send + Sync>::from("connection refused").into(),
        }
    }
}

impl ImageServer for FakeServer {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
    fn queue_length(&mut self) -> Result<usize, HttpError> {
        if self.dead {
            return Err(self.down());
        }
        Ok(self.queue.len() + self.foreign)
    }
    fn submit(&mut self, frames: &[(usize, &FrameRequest)]) -> Result<(), HttpError> {
        if self.dead {
            return Err(self.down());
        }
        if let Some(status) = self.refuses_with {
            return Err(HttpError::Status {
                endpoint: self.endpoint.to_string(),
                status,
                message: format!("refused with {status}"),
            });
        }
        self.queue.extend(frames.iter().map(|(f, _)| *f));
        Ok(())
    }
    fn poll(&mut self) -> Result<Vec<(usize, Outcome)>, HttpError> {
        if self.dead {
            return Err(self.down());
        }
        if self.foreign > 0 {
            self.foreign -= 1;
            return Ok(Vec::new());
        }
        let mut done = Vec::new();
        for _ in 0..self.speed {
            let Some(frame) = self.queue.pop_front() else {
                break;
            };
            let mut log = self.log.lock().unwrap();
            if self.dies_after == Some(log.drawn[self.index].len()) {
                self.dead = true;
                self.queue.push_front(frame);
                return Err(self.down());
            }
            if self.fails.contains(&frame) {
                done.push((
                    frame,
                    Outcome::Failed(format!("out of memory on {}", self.index)),
                ));
                continue;
            }
            log.drawn[self.index].push(frame);
            done.push((frame, Outcome::Image(RgbaImage::new(1, 1))));
        }
        Ok(done)
    }
    fn cancel(&mut self) {
        self.queue.clear();
        self.log.lock().unwrap().cancelled[self.index] = true;
    }
}

fn requests(n: usize) -> Vec<FrameRequest> {
    (0..n)
        .map(|i| FrameRequest {
            prompt: format!("frame {i}"),
            negative_prompt: String::new(),
            seed: i as u64,
            conditioning: Default::default(),
        })
        .collect()
}

fn fast() -> FanOutOptions {
    FanOutOptions {
        window: 2,
        poll_interval: Duration::from_millis(1),
        stall_timeout: Duration::from_secs(5),
        max_transport_errors: 3,
    }
}

type Run = (
    Vec<(usize, usize)>,
    Vec<(usize, String)>,
    Vec<(usize, usize)>,
);

/// Runs the fan-out; returns (done frames with their server, failed frames with messages, lost servers).
fn run(servers: Vec<FakeServer>, n: usize) -> Run {
    let servers: Vec<Box<dyn ImageServer>> =
        servers.into_iter().map(|s| Box::new(s) as _).collect();
    let (mut done, mut failed, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    fan_out::<()>(servers, &requests(n), &fast(), |event| {
        match event {
            Event::Done { frame, server, .. } => done.push((frame, server)),
            Event::Failed { frame, message } => failed.push((frame, message)),
            Event::ServerLost {
                server, returned, ..
            } => lost.push((server, returned)),
        }
        Ok(())
    })
    .unwrap();
    done.sort();
    (done, failed, lost)
}

#[test]
fn two_servers_share_the_frames_and_none_is_drawn_twice() {
    let log = Arc::new(Mutex::new(Log::default()));
    let (done, failed, lost) = run(vec![FakeServer::new(0, &log), FakeServer::new(1, &log)], 16);
    assert!(failed.is_empty() && lost.is_empty());
    assert_eq!(
        done.iter().map(|d| d.0).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    let log = log.lock().unwrap();
    assert!(
        !log.drawn[0].is_empty() && !log.drawn[1].is_empty(),
        "both drew: {:?}",
        log.drawn
    );
    assert_eq!(
        log.drawn[0].len() + log.drawn[1].len(),
        16,
        "{:?}",
        log.drawn
    );
}

#[test]
fn a_server_dying_mid_batch_hands_its_frames_to_the_other() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut dying = FakeServer::new(0, &log);
    dying.dies_after = Some(2);
    let (done, failed, lost) = run(vec![dying, FakeServer::new(1, &log)], 16);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(done.len(), 16);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].0, 0);
    let log = log.lock().unwrap();
    assert_eq!(log.drawn[0].len(), 2);
    assert_eq!(log.drawn[1].len(), 14);
    assert!(log.cancelled[0], "the lost server's work is cancelled");
}

#[test]
fn a_failed_frame_is_tried_once_elsewhere_then_fails_with_the_servers_message() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut flaky = FakeServer::new(0, &log);
    flaky.fails = vec![3, 5];
    let mut other = FakeServer::new(1, &log);
    other.fails = vec![5];
    let (done, failed, lost) = run(vec![flaky, other], 8);
    assert!(lost.is_empty());
    assert_eq!(done.len(), 7, "{done:?}");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, 5);
    assert!(failed[0].1.starts_with("out of memory"), "{}", failed[0].1);
}

#[test]
fn with_every_server_gone_the_rest_fail_naming_why() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut a = FakeServer::new(0, &log);
    a.dies_after = Some(1);
    let mut b = FakeServer::new(1, &log);
    b.dies_after = Some(1);
    let (done, failed, lost) = run(vec![a, b], 6);
    assert_eq!(lost.len(), 2);
    assert_eq!(done.len() + failed.len(), 6, "every frame ends once");
    assert!(
        failed
            .iter()
            .all(|(_, m)| m.contains("no server is left") && m.contains("connection refused")),
        "{failed:?}"
    );
}

#[test]
fn frames_go_to_the_server_with_the_shorter_queue() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut busy = FakeServer::new(0, &log);
    busy.foreign = 200;
    let (done, _, _) = run(vec![busy, FakeServer::new(1, &log)], 12);
    assert_eq!(done.len(), 12);
    let log = log.lock().unwrap();
    assert!(
        log.drawn[1].len() >= 10,
        "the idle server drew most: {:?}",
        log.drawn
    );
}

#[test]
fn a_caller_error_stops_the_run_and_cancels_queued_work() {
    let log = Arc::new(Mutex::new(Log::default()));
    let servers: Vec<Box<dyn ImageServer>> = vec![Box::new(FakeServer::new(0, &log))];
    let mut seen = 0;
    let result = fan_out(servers, &requests(10), &fast(), |_| {
        seen += 1;
        if seen == 2 { Err("disk full") } else { Ok(()) }
    });
    assert_eq!(result, Err("disk full"));
    assert!(log.lock().unwrap().cancelled[0]);
}

#[test]
fn a_5xx_moves_the_frames_to_another_server_and_a_4xx_fails_them() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut proxy_down = FakeServer::new(0, &log);
    proxy_down.refuses_with = Some(503);
    let (done, failed, lost) = run(vec![proxy_down, FakeServer::new(1, &log)], 6);
    assert_eq!((done.len(), failed.len(), lost.len()), (6, 0, 1));
    assert!(done.iter().all(|(_, server)| *server == 1));

    let log = Arc::new(Mutex::new(Log::default()));
    let mut refusing = FakeServer::new(0, &log);
    refusing.refuses_with = Some(422);
    let (done, failed, _) = run(vec![refusing], 4);
    assert!(done.is_empty());
    assert_eq!(failed.len(), 4);
    assert!(
        failed.iter().all(|(_, m)| m.contains("refused with 422")),
        "{failed:?}"
    );
}
