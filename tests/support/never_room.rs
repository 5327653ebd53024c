//! A servlet whose input never has room.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mpserver::Error;
use mpserver::error::StartError;
use mpserver::metrics::ServletNode;
use mpserver::servlet::Servlet;
use mpserver::servlet::plumbing::{Sink, SinkRef, StartContext, Started, TicketRef};

/// A servlet whose input never has room: each push waits out its deadline,
/// then `overrun` more (as a loaded machine may, so the request's own
/// deadline passes while it is still being pushed), and gives up. Counts the
/// pushes in `pushes`.
#[derive(Default)]
pub struct NeverRoom {
    pub pushes: Arc<AtomicUsize>,
    pub overrun: Duration,
}

struct NeverRoomSink {
    pushes: Arc<AtomicUsize>,
    overrun: Duration,
}

impl Sink<u32> for NeverRoomSink {
    fn push(&self, _t: TicketRef, _v: u32) {}
    fn push_until(&self, _t: TicketRef, _v: u32, deadline: Instant) -> bool {
        self.pushes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()) + self.overrun);
        false
    }
    fn fail(&self, _t: TicketRef, _e: Error) {}
}

impl Servlet for NeverRoom {
    type Input = u32;
    type Output = u32;
    fn start(
        self: Box<Self>,
        _output: SinkRef<u32>,
        _ctx: &mut StartContext,
    ) -> Result<Started<u32>, StartError> {
        Ok(Started {
            input: Arc::new(NeverRoomSink {
                pushes: self.pushes,
                overrun: self.overrun,
            }),
            node: ServletNode::new("never-room", "NeverRoom"),
        })
    }
}
