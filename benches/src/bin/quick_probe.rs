//! Ad-hoc latency probe (not part of the suite): thread-servlet call latency.
use mpserver::prelude::*;
use std::time::Instant;
fn main() {
    if std::env::args().any(|a| a == "--pin") {
        mpserver_benches::pin_to_cpu0().unwrap();
    }
    let server = Server::start(ThreadServlet::new(worker_fn(|x: i64| 2 * x))).unwrap();
    for i in 0..1000 {
        server.call(i).unwrap();
    }
    let n = 20000;
    let t = Instant::now();
    for i in 0..n {
        server.call(i).unwrap();
    }
    let e = t.elapsed();
    println!(
        "thread call: {:.2} us/call",
        e.as_secs_f64() * 1e6 / n as f64
    );
    let h = server.handle();
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..n {
            h.async_call(i).await.unwrap();
        }
    });
    println!(
        "thread async call: {:.2} us/call",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
