//! A batch sent to a worker process is encoded in one pass: an input whose
//! `Serialize` panics fails alone, and the items before and after it in the
//! same batch are served.

use std::time::Duration;

use mpserver::prelude::*;
use serde::{Deserialize, Serialize};

/// Serializing 13 panics.
#[derive(Clone, Debug, Deserialize)]
struct Touchy(i64);

impl Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            panic!("touchy about 13");
        }
        s.serialize_i64(self.0)
    }
}

/// Returns each value and the size of its batch.
#[derive(Clone, Serialize, Deserialize)]
struct Echo;

impl Worker for Echo {
    type Input = Touchy;
    type Output = (i64, usize);
    fn call(&mut self, x: Touchy) -> Result<(i64, usize), WorkerError> {
        Ok((x.0, 1))
    }
    fn call_batch(&mut self, xs: Vec<Touchy>) -> Vec<Result<(i64, usize), WorkerError>> {
        let n = xs.len();
        xs.into_iter().map(|x| Ok((x.0, n))).collect()
    }
}

#[test]
fn a_panicking_serialize_fails_only_its_item_in_a_batch() {
    for batching in [Batching::Fixed, Batching::Adaptive] {
        let server = Server::start(
            ProcessServlet::new(Echo)
                .batch_size(32)
                .batching(batching)
                .batch_wait_time(Duration::from_millis(300)),
        )
        .unwrap();
        // Twice: the same process goes on serving after the panic.
        for round in 0..2 {
            let pending: Vec<_> = (0..32)
                .map(|i| server.submit(Touchy(i), CallOptions::default()).unwrap())
                .collect();
            let mut biggest = 0;
            for (i, p) in (0i64..).zip(pending) {
                match p.wait() {
                    Ok((v, n)) => {
                        assert_ne!(i, 13, "{batching:?} round {round}");
                        assert_eq!(v, i);
                        biggest = biggest.max(n);
                    }
                    Err(e) => {
                        assert_eq!(i, 13, "{batching:?} round {round}: {e}");
                        let msg = e.to_string();
                        assert!(msg.contains("panic while serializing"), "{msg}");
                        assert!(msg.contains("touchy about 13"), "{msg}");
                    }
                }
            }
            // Items around the panicking one still went out together.
            if batching == Batching::Fixed {
                assert!(biggest > 1, "{batching:?} round {round}: {biggest}");
            }
        }
        assert_eq!(server.call(Touchy(5)).unwrap().0, 5);
    }
}
