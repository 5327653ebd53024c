//! Settled results and their delivery, outside the read lock: the bytes a
//! result came in (a reference-counted part of its frame, or held in its
//! item's shared-memory slot), decoding them with the user's `Deserialize`, and
//! handing values and failures to the next stage, each under its own panic
//! guard. Used by whoever reads (`reader.rs`) and by the supervisor for items
//! it fails itself.

use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;

use serde::de::DeserializeOwned;

use crate::error::{CodecDirection, CodecError, Error, WorkerId};
use crate::ipc::Codec;
use crate::ipc::frame;
use crate::ipc::shm::ResultHold;
use crate::metrics::ServletStats;
use crate::servlet::plumbing::{SinkRef, TicketRef};
use crate::worker::{WorkerError, panic};

/// One settled item, to deliver outside the read lock.
pub(super) enum Delivery<Out> {
    Value(TicketRef, Out),
    Failure(TicketRef, Error),
    /// Skipped by the worker: the ticket is only dropped (its request ended).
    Release(TicketRef),
    /// The worker process's `tracing` events (a LOG frame's body), re-emitted
    /// outside the read lock, on the reader thread (`worker_log.rs`).
    Log(Vec<u8>),
}

/// A settled item as read from a worker: a result to decode where it is
/// delivered (the user's `Deserialize` runs outside the read lock, on the
/// thread that delivers it; a caller decodes only its own result), or a
/// delivery ready to go.
pub(super) enum Settled<Out> {
    Result(TicketRef, Encoded),
    Ready(Delivery<Out>),
}

impl<Out> Settled<Out> {
    /// The same, with a result held [`Held::InFrame`] given its own part of
    /// `frame` (to keep it beyond the frame's delivery).
    pub(super) fn owned(self, frame: &Bytes) -> Self {
        match self {
            Settled::Result(
                t,
                Encoded {
                    status,
                    bytes: Held::InFrame(r),
                },
            ) => Settled::Result(
                t,
                Encoded {
                    status,
                    bytes: Held::Frame(frame.slice(r)),
                },
            ),
            s => s,
        }
    }
}

/// A result's bytes: a part of the frame it came in (reference-counted, not
/// copied: the frame's buffer lives until its last result is decoded), or
/// in the item's shared-memory slot.
pub(super) enum Held {
    /// Bytes of the frame the reader delivers them with (a range in it).
    InFrame(std::ops::Range<usize>),
    Frame(Bytes),
    /// A result in its item's slot; the slot is released when this drops
    /// (after the result is decoded, or with an undelivered result), or,
    /// when the decoded value keeps zero-copy `Bytes` views of it, when
    /// they drop.
    Slot(ResultHold),
}

impl Held {
    fn bytes<'a>(&'a self, frame: &'a [u8]) -> &'a [u8] {
        match self {
            Held::InFrame(r) => frame.get(r.clone()).unwrap_or(&[]),
            Held::Frame(b) => b,
            // Checked when read (`result_bytes`); the slot stays bound to
            // the item, at the same generation, while this lives.
            Held::Slot(h) => h.bytes(),
        }
    }
}

/// A result entry's status and bytes.
pub(super) struct Encoded {
    pub(super) status: u8,
    pub(super) bytes: Held,
}

impl Encoded {
    /// Decodes the result, counting it as a success or a failure in
    /// `stats`. A panicking `Deserialize` fails this item only (see
    /// [`decode`]). A slot holding the result is released here.
    pub(super) fn decode<Out: DeserializeOwned>(
        self,
        who: &WorkerId,
        codec: Codec,
        stats: &ServletStats,
        frame: &[u8],
    ) -> Result<Out, Error> {
        let status = self.status;
        let r = match self.bytes {
            // `Bytes` in it may be views of the slot (`shm::view`).
            Held::Slot(h) => h.decode(|b| decode::<Out>(who, codec, status, b)),
            held => decode::<Out>(who, codec, status, held.bytes(frame)),
        };
        let counter = if r.is_ok() {
            &stats.items_ok
        } else {
            &stats.items_err
        };
        counter.fetch_add(1, Relaxed);
        r
    }
}

/// Delivers one settled item to `out`. A panic in the code that runs there
/// (the next stage, user `Clone`/`Drop`) fails that item only.
pub(super) fn deliver<Out: Send + 'static>(out: &SinkRef<Out>, who: &WorkerId, d: Delivery<Out>) {
    match d {
        Delivery::Value(ticket, v) => {
            let again = ticket.clone();
            if let Err(error) = panic::catch(false, || out.push(ticket, v)) {
                tracing::error!(worker = %who, %error, "panic while delivering a result");
                let worker = who.clone();
                let _ = panic::catch(false, || out.fail(again, Error::Worker { worker, error }));
            }
        }
        Delivery::Failure(ticket, e) => {
            if let Err(error) = panic::catch(false, || out.fail(ticket, e)) {
                tracing::error!(worker = %who, %error, "panic while delivering a failure");
            }
        }
        Delivery::Release(ticket) => {
            let _ = panic::catch(false, || drop(ticket));
        }
        // The subscriber is the application's code: its panic stays here.
        Delivery::Log(body) => {
            let _ = panic::catch(false, || super::worker_log::emit(who, &body));
        }
    }
}

/// Decodes one result entry.
pub(super) fn decode<Out: DeserializeOwned>(
    id: &WorkerId,
    value_codec: Codec,
    status: u8,
    payload: &[u8],
) -> Result<Out, Error> {
    let codec = |direction, message: String| {
        Error::Codec(CodecError {
            worker: id.clone(),
            direction,
            message,
        })
    };
    match status {
        // A panicking `Deserialize` fails its item, not this thread.
        frame::STATUS_OK => panic::catch(false, || value_codec.decode::<Out>(payload))
            .unwrap_or_else(|p| Err(format!("panic while deserializing: {}", p.message())))
            .map_err(|e| codec(CodecDirection::DecodeOutput, e)),
        frame::STATUS_WORKER_ERROR => Err(match postcard::from_bytes::<WorkerError>(payload) {
            Ok(error) => Error::Worker {
                worker: id.clone(),
                error,
            },
            Err(e) => codec(
                CodecDirection::DecodeOutput,
                format!("undecodable worker error: {e}"),
            ),
        }),
        _ => {
            let (dir, msg) = payload.split_first().map_or((3, &[][..]), |(d, m)| (*d, m));
            let direction = match dir {
                0 => CodecDirection::EncodeInput,
                1 => CodecDirection::DecodeInput,
                2 => CodecDirection::EncodeOutput,
                _ => CodecDirection::DecodeOutput,
            };
            Err(codec(direction, String::from_utf8_lossy(msg).into_owned()))
        }
    }
}
