//! `tracing` events of worker processes, forwarded to the server.
//!
//! A worker process's `main` never runs, so a subscriber set up there does
//! not see what the worker logs. Instead, when the server's own subscriber
//! enables any level ([`LevelFilter::current`] in the server), each worker
//! process installs a forwarding subscriber for the same levels (unless its
//! start hook installed one of its own). Events go into a bounded queue
//! (never blocking the thread that logs; an event that finds it full is
//! dropped and counted) and travel to the server in LOG frames, in the same
//! writes as the worker's results (which the server is reading for): events
//! logged while the worker is idle, e.g. by a thread of its own, go with its
//! next results, or when it ends.
//! The server re-emits each event under the target
//! `mpserver::servlet::process::worker_log`, at its level, with the worker's
//! `worker` name, `index` and `pid`, the event's own `target`, its `fields`
//! and the names of the `spans` it was in; dropped events are reported at
//! warn.
//!
//! ```text
//! LOG := postcard(Batch { dropped: u64, records: [Record] })
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::error::WorkerId;
use crate::ipc::frame::{FrameBuf, kind};

/// Events a worker process holds for the server at most.
const QUEUE: usize = 4096;
/// Bytes of events per LOG frame, about.
const PER_FRAME: usize = 256 << 10;
/// Longest message, fields or span list sent (longer ones are cut).
const MAX_TEXT: usize = 4096;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// 1 error … 5 trace.
    pub(crate) level: u8,
    pub(crate) target: String,
    pub(crate) message: String,
    /// The event's other fields, `name=value` separated by spaces.
    pub(crate) fields: String,
    /// The spans the event was in, outermost first, separated by `:`.
    pub(crate) spans: String,
}

/// A LOG frame's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Batch {
    /// Events dropped since the previous frame (the queue was full).
    pub(crate) dropped: u64,
    pub(crate) records: Vec<Record>,
}

fn level_code(l: &Level) -> u8 {
    match *l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The most verbose level the server's subscriber enables (0: none), sent
/// to each worker process in its HELLO.
pub(crate) fn server_level() -> u8 {
    match LevelFilter::current().into_level() {
        None => 0,
        Some(l) => level_code(&l),
    }
}

fn filter_of(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut at = MAX_TEXT;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

/// State shared by the forwarding layer and the serve loop.
struct Link {
    dropped: AtomicU64,
}

/// The `tracing` layer of a worker process: queues events for the server.
struct Forward {
    tx: Sender<Record>,
    link: Arc<Link>,
}

#[derive(Default)]
struct Visit {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Visit {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value}", field.name());
        }
    }
}

impl<S> Layer<S> for Forward
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut v = Visit::default();
        event.record(&mut v);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default();
        let record = Record {
            level: level_code(meta.level()),
            target: meta.target().to_string(),
            message: cut(v.message),
            fields: cut(v.fields),
            spans: cut(spans),
        };
        if self.tx.try_send(record).is_err() {
            self.link.dropped.fetch_add(1, SeqCst);
        }
    }
}

/// The serve loop's end of the forwarding: takes queued events into LOG
/// frames.
pub(crate) struct Forwarder {
    rx: Receiver<Record>,
    link: Arc<Link>,
}

/// In a worker process: installs the forwarding subscriber for events up to
/// `level` (a code from [`server_level`]), unless the level is off or the
/// process already has a global subscriber.
pub(crate) fn install(level: u8) -> Option<Forwarder> {
    if level == 0 || tracing::dispatcher::has_been_set() {
        return None;
    }
    let link = Arc::new(Link {
        dropped: AtomicU64::new(0),
    });
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let layer = Forward {
        tx,
        link: link.clone(),
    }
    .with_filter(filter_of(level));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber).ok()?;
    Some(Forwarder { rx, link })
}

impl Forwarder {
    /// Appends LOG frames with the events waiting (each frame at most about
    /// [`PER_FRAME`] bytes) and the count of those dropped to `buf`; returns
    /// whether it appended any.
    pub(crate) fn drain_into(&self, buf: &mut FrameBuf) -> bool {
        let mut any = false;
        loop {
            let mut records = Vec::new();
            let mut bytes = 0;
            while bytes < PER_FRAME {
                let Ok(r) = self.rx.try_recv() else { break };
                bytes += r.target.len() + r.message.len() + r.fields.len() + r.spans.len() + 8;
                records.push(r);
            }
            let dropped = self.link.dropped.swap(0, SeqCst);
            if records.is_empty() && dropped == 0 {
                return any;
            }
            let more = bytes >= PER_FRAME;
            if let Ok(body) = postcard::to_stdvec(&Batch { dropped, records }) {
                buf.frame(kind::LOG, &body);
                any = true;
            }
            if !more {
                return any;
            }
        }
    }
}

macro_rules! reemit {
    ($level:expr, $worker:expr, $r:expr) => {
        tracing::event!(
            $level,
            worker = %$worker.name,
            index = $worker.index,
            pid = $worker.pid,
            target = %$r.target,
            spans = %$r.spans,
            fields = %$r.fields,
            "{}",
            $r.message
        )
    };
}

/// In the server: re-emits the events of a LOG frame from `worker`.
pub(crate) fn emit(worker: &WorkerId, body: &[u8]) {
    let Ok(batch) = postcard::from_bytes::<Batch>(body) else {
        tracing::debug!(worker = %worker, "undecodable LOG frame from a worker process");
        return;
    };
    if batch.dropped > 0 {
        tracing::warn!(
            worker = %worker.name,
            index = worker.index,
            pid = worker.pid,
            dropped = batch.dropped,
            "worker process dropped log events (its queue was full)"
        );
    }
    for r in &batch.records {
        match r.level {
            1 => reemit!(Level::ERROR, worker, r),
            2 => reemit!(Level::WARN, worker, r),
            3 => reemit!(Level::INFO, worker, r),
            4 => reemit!(Level::DEBUG, worker, r),
            _ => reemit!(Level::TRACE, worker, r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_text_is_cut() {
        let r = Record {
            level: 2,
            target: "t".into(),
            message: cut("é".repeat(MAX_TEXT)),
            fields: "a=1".into(),
            spans: "outer:inner".into(),
        };
        assert!(r.message.len() <= MAX_TEXT + '…'.len_utf8());
        let b = Batch {
            dropped: 3,
            records: vec![r],
        };
        let bytes = postcard::to_stdvec(&b).unwrap();
        assert_eq!(postcard::from_bytes::<Batch>(&bytes).unwrap(), b);
    }
}
