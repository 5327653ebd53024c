//! Starting and stopping a server from async code without blocking the
//! executor (issue 14, "async all the way").

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mpserver::prelude::*;
use mpserver::{Worker, WorkerContext, WorkerError};
use serde::{Deserialize, Serialize};
use support::*;

/// Takes `init_ms` to initialise, then doubles (taking 500 ms for a
/// negative number).
#[derive(Clone, Serialize, Deserialize)]
struct SlowInit {
    init_ms: u64,
}

impl Worker for SlowInit {
    type Input = i64;
    type Output = i64;
    fn init(&mut self, _: &WorkerContext) -> Result<(), WorkerError> {
        std::thread::sleep(Duration::from_millis(self.init_ms));
        Ok(())
    }
    fn call(&mut self, x: i64) -> Result<i64, WorkerError> {
        if x < 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(2 * x)
    }
}

/// Counts ticks of a task on the same single-threaded executor while `f`
/// runs: a blocked executor would not tick.
async fn ticks_during<F: std::future::Future>(f: F) -> (F::Output, u64) {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    let out = f.await;
    ticker.abort();
    (out, ticks.load(Ordering::Relaxed))
}

#[test]
fn start_async_and_shutdown_async_do_not_block_the_executor() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // Process workers whose init takes 600 ms: a blocking start would
        // hold the only executor thread all that time.
        let builder = Server::builder(ProcessServlet::new(SlowInit { init_ms: 600 }).workers(2));
        let (server, ticks) = ticks_during(builder.start_async()).await;
        let server = server.unwrap();
        assert!(
            ticks >= 5,
            "the executor ticked {ticks} times during the start"
        );
        assert_eq!(server.async_call(21).await.unwrap(), 42);
        let pids = server.worker_pids();
        assert_eq!(pids.len(), 2);

        // An item in flight for 500 ms: the drain waits for it, off the
        // executor.
        let h = server.handle();
        let slow = tokio::spawn(async move {
            h.async_call_with(-1, CallOptions::default().timeout(Duration::from_secs(10)))
                .await
        });
        while server.backlog() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ((), ticks) = ticks_during(server.shutdown_async()).await;
        assert!(
            ticks >= 1,
            "the executor ticked {ticks} times during shutdown"
        );
        // It was admitted before the shutdown: the drain completed it.
        assert_eq!(slow.await.unwrap().unwrap(), -2);
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{pid} remains"
            );
        }
    });
}

/// A failing start from async code fails with the worker's init error.
#[test]
fn start_async_reports_a_failed_init() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let err = rt
        .block_on(Server::builder(ProcessServlet::new(BadInit { panic: false })).start_async())
        .expect_err("start must fail");
    assert!(err.to_string().contains("no model at /nowhere"), "{err}");
}
