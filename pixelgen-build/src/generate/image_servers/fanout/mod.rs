//! Spreads frames over several servers and collects what they draw.
//!
//! Each server has a worker thread that owns its [`ImageServer`]. Workers pull frames
//! from one shared list, so a fast server takes more than a slow one.
//!
//! Invariants:
//! - A frame is queued on at most one server at a time: it goes back to the shared list
//!   only when the server holding it is given up (unreachable three polls in a row, or no
//!   frame finished within the stall timeout), and that server's queued work is cancelled
//!   (best effort). So no frame is drawn twice while its server lives.
//! - Each server keeps at most [`FanOutOptions::window`] of this run's frames queued, and
//!   takes none while its queue (everyone's work, as the server reports it) is longer than
//!   the shortest live server's by more than the window: frames go where the queues are short.
//! - A frame the server reports as failed is tried once more on another live server; a
//!   second failure, or an image that is not what was asked for, fails it with the
//!   server's message ([`Event::Failed`]). Nothing reaches the caller but whole images.
//! - Every frame ends in exactly one [`Event::Done`] or [`Event::Failed`].

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use image::RgbaImage;

use super::http::HttpError;
use super::{FrameRequest, ImageServer, Outcome};

/// How the fan-out paces itself.
#[derive(Debug, Clone)]
pub struct FanOutOptions {
    /// Most frames of this run queued on one server at once.
    pub window: usize,
    /// The shortest time between polls of a server with work queued. Each server is
    /// polled about four times per frame it takes (its measured pace), at most once a
    /// second: polling costs the server CPU time that its own work needs.
    pub poll_interval: Duration,
    /// A server with work queued and no frame finished for this long is given up.
    pub stall_timeout: Duration,
    /// Consecutive unanswered requests after which a server is given up.
    pub max_transport_errors: u32,
}

impl Default for FanOutOptions {
    fn default() -> Self {
        FanOutOptions {
            window: 3,
            poll_interval: Duration::from_millis(100),
            stall_timeout: Duration::from_secs(600),
            max_transport_errors: 3,
        }
    }
}

/// What the fan-out reports, in the order it happens.
#[derive(Debug)]
pub enum Event {
    /// Frame `frame` (an index into the requests) was drawn by server `server`.
    Done {
        frame: usize,
        server: usize,
        image: RgbaImage,
    },
    /// Frame `frame` could not be drawn; `message` is the server's.
    Failed { frame: usize, message: String },
    /// Server `server` was given up; `returned` of its frames went back to the others.
    ServerLost {
        server: usize,
        message: String,
        returned: usize,
    },
}

struct Shared {
    pending: VecDeque<usize>,
    /// Servers each frame failed on.
    failed_on: Vec<Vec<usize>>,
    unfinished: usize,
    alive: Vec<bool>,
    /// Last queue length each server reported (`usize::MAX` once given up).
    queue_lengths: Vec<usize>,
    /// The caller stopped listening: workers cancel their work and stop.
    aborted: bool,
}

impl Shared {
    fn min_live_queue(&self) -> usize {
        self.queue_lengths
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| **alive)
            .map(|(q, _)| *q)
            .min()
            .unwrap_or(0)
    }

    /// Frames in the list that no live server may take any more fail now (else they
    /// would wait forever).
    fn settle(&mut self, events: &mpsc::Sender<Event>, messages: &[String]) {
        let alive: Vec<usize> = (0..self.alive.len()).filter(|&s| self.alive[s]).collect();
        let mut keep = VecDeque::with_capacity(self.pending.len());
        while let Some(frame) = self.pending.pop_front() {
            if alive.iter().any(|s| !self.failed_on[frame].contains(s)) {
                keep.push_back(frame);
                continue;
            }
            let message = if alive.is_empty() {
                format!("no server is left to draw it ({})", messages.join("; "))
            } else {
                messages.last().cloned().unwrap_or_default()
            };
            self.unfinished -= 1;
            let _ = events.send(Event::Failed { frame, message });
        }
        self.pending = keep;
    }
}

/// Draws `frames` on `servers`, calling `on_event` on this thread for each event as it
/// happens. Returns when every frame is done or failed, or as soon as `on_event` returns
/// an error (the servers' queued work is then cancelled), with that error.
pub fn fan_out<E>(
    servers: Vec<Box<dyn ImageServer>>,
    frames: &[FrameRequest],
    options: &FanOutOptions,
    mut on_event: impl FnMut(Event) -> Result<(), E>,
) -> Result<(), E> {
    let count = servers.len();
    let shared = Mutex::new(Shared {
        pending: (0..frames.len()).collect(),
        failed_on: vec![Vec::new(); frames.len()],
        unfinished: frames.len(),
        alive: vec![true; count],
        queue_lengths: vec![0; count],
        aborted: false,
    });
    let wake = Condvar::new();
    let lost_messages = Mutex::new(Vec::<String>::new());
    let (sender, receiver) = mpsc::channel();
    if count == 0 {
        for frame in 0..frames.len() {
            on_event(Event::Failed {
                frame,
                message: "no server to draw it".into(),
            })?;
        }
        return Ok(());
    }
    std::thread::scope(|scope| {
        for (index, server) in servers.into_iter().enumerate() {
            let sender = sender.clone();
            let (shared, wake, lost_messages) = (&shared, &wake, &lost_messages);
            scope.spawn(move || {
                Worker {
                    index,
                    server,
                    frames,
                    options,
                    shared,
                    wake,
                    lost_messages,
                    events: sender,
                    in_flight: HashSet::new(),
                }
                .run()
            });
        }
        drop(sender);
        let mut result = Ok(());
        for event in receiver {
            if result.is_ok()
                && let Err(error) = on_event(event)
            {
                result = Err(error);
                let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                state.aborted = true;
                wake.notify_all();
            }
        }
        result
    })
}

struct Worker<'a> {
    index: usize,
    server: Box<dyn ImageServer>,
    frames: &'a [FrameRequest],
    options: &'a FanOutOptions,
    shared: &'a Mutex<Shared>,
    wake: &'a Condvar,
    lost_messages: &'a Mutex<Vec<String>>,
    events: mpsc::Sender<Event>,
    /// This run's frames queued on the server.
    in_flight: HashSet<usize>,
}

impl Worker<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(mut self) {
        let mut transport_errors = 0;
        let mut last_progress = Instant::now();
        // Seconds per finished frame on this server (exponential average), for pacing.
        let mut pace: Option<f64> = None;
        // The queue length decides the first take too.
        if let Ok(length) = self.server.queue_length() {
            self.lock().queue_lengths[self.index] = length;
        }
        loop {
            let take = {
                let mut state = self.lock();
                if state.aborted {
                    drop(state);
                    self.server.cancel();
                    return;
                }
                if state.unfinished == 0 || !state.alive[self.index] {
                    return;
                }
                let room = self.options.window.saturating_sub(self.in_flight.len());
                let mine = state.queue_lengths[self.index];
                let mut take = Vec::new();
                if room > 0 && mine <= state.min_live_queue() + self.options.window {
                    let mut skipped = VecDeque::new();
                    while take.len() < room {
                        let Some(frame) = state.pending.pop_front() else {
                            break;
                        };
                        if state.failed_on[frame].contains(&self.index) {
                            skipped.push_back(frame);
                        } else {
                            take.push(frame);
                        }
                    }
                    skipped.extend(state.pending.drain(..));
                    state.pending = skipped;
                }
                if take.is_empty() && self.in_flight.is_empty() {
                    // Nothing queued here: wait for frames to come back or the run to end.
                    let _ = self
                        .wake
                        .wait_timeout(state, self.options.poll_interval)
                        .unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                take
            };
            if !take.is_empty() {
                let requests: Vec<(usize, &FrameRequest)> =
                    take.iter().map(|&f| (f, &self.frames[f])).collect();
                match self.server.submit(&requests) {
                    Ok(()) => {
                        if self.in_flight.is_empty() {
                            last_progress = Instant::now();
                        }
                        self.in_flight.extend(take.iter().copied());
                    }
                    Err(error) if error.is_server_trouble() => {
                        self.give_up(take, error.to_string());
                        return;
                    }
                    Err(error) => {
                        // The server refused the request itself (4xx: a setting it does
                        // not know): every server would, so these frames fail.
                        let mut state = self.lock();
                        for frame in take {
                            state.unfinished -= 1;
                            let _ = self.events.send(Event::Failed {
                                frame,
                                message: error.to_string(),
                            });
                        }
                        continue;
                    }
                }
            }
            let interval = pace.map_or(self.options.poll_interval * 2, |pace| {
                Duration::from_secs_f64(pace / 4.0)
                    .clamp(self.options.poll_interval, Duration::from_secs(1))
            });
            std::thread::sleep(interval);
            match self.poll() {
                Ok(finished) => {
                    transport_errors = 0;
                    if finished > 0 {
                        let per_frame = last_progress.elapsed().as_secs_f64() / finished as f64;
                        pace = Some(pace.map_or(per_frame, |p| 0.7 * p + 0.3 * per_frame));
                        last_progress = Instant::now();
                    }
                }
                Err(error) => {
                    transport_errors += 1;
                    if transport_errors >= self.options.max_transport_errors {
                        self.give_up(Vec::new(), error.to_string());
                        return;
                    }
                }
            }
            if !self.in_flight.is_empty() && last_progress.elapsed() > self.options.stall_timeout {
                let message = format!(
                    "{} finished no frame in {} s",
                    self.server.endpoint(),
                    self.options.stall_timeout.as_secs()
                );
                self.give_up(Vec::new(), message);
                return;
            }
        }
    }

    /// One poll: finished frames become events. Returns how many finished.
    fn poll(&mut self) -> Result<usize, HttpError> {
        let length = self.server.queue_length()?;
        self.lock().queue_lengths[self.index] = length;
        if self.in_flight.is_empty() {
            return Ok(0);
        }
        let finished = self.server.poll()?;
        let progressed = finished.len();
        for (frame, outcome) in finished {
            if !self.in_flight.remove(&frame) {
                continue;
            }
            match outcome {
                Outcome::Image(image) => {
                    self.lock().unfinished -= 1;
                    let _ = self.events.send(Event::Done {
                        frame,
                        server: self.index,
                        image,
                    });
                }
                Outcome::Unusable(message) => {
                    self.lock().unfinished -= 1;
                    let _ = self.events.send(Event::Failed { frame, message });
                }
                Outcome::Failed(message) => {
                    let mut state = self.lock();
                    state.failed_on[frame].push(self.index);
                    if state.failed_on[frame].len() >= 2 {
                        state.unfinished -= 1;
                        let _ = self.events.send(Event::Failed { frame, message });
                    } else {
                        state.pending.push_back(frame);
                        state.settle(&self.events, std::slice::from_ref(&message));
                        self.wake.notify_all();
                    }
                }
            }
        }
        Ok(progressed)
    }

    /// Marks this server lost: its frames (and `unsent`) go back to the list.
    fn give_up(&mut self, unsent: Vec<usize>, message: String) {
        self.server.cancel();
        let returned: Vec<usize> = unsent.into_iter().chain(self.in_flight.drain()).collect();
        let messages = {
            let mut lost = self.lost_messages.lock().unwrap_or_else(|e| e.into_inner());
            lost.push(message.clone());
            lost.clone()
        };
        let mut state = self.lock();
        state.alive[self.index] = false;
        state.queue_lengths[self.index] = usize::MAX;
        let count = returned.len();
        // Returned frames go first: they have waited longest.
        for frame in returned.into_iter().rev() {
            state.pending.push_front(frame);
        }
        let _ = self.events.send(Event::ServerLost {
            server: self.index,
            message,
            returned: count,
        });
        state.settle(&self.events, &messages);
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests;
