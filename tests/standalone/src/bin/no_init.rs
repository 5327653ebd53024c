//! A program built without `auto-init` that starts a process servlet.
//!
//! With `CALL_INIT=1` in the environment (which worker processes inherit,
//! unlike arguments) it calls `mpserver::init()` first, as documented: it
//! prints `ok 42`. Without `--init`, each worker process would run this `main` again:
//! the worker must refuse to start a server and exit, and the start must fail
//! at once with an error that names `mpserver::init()`.

use mpserver::{ProcessServlet, Server, Worker, WorkerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Double;

impl Worker for Double {
    type Input = u64;
    type Output = u64;
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        Ok(2 * x)
    }
}

fn main() {
    if std::env::var_os("CALL_INIT").is_some_and(|v| v == "1") {
        mpserver::init();
    }
    let t = std::time::Instant::now();
    match Server::start(ProcessServlet::new(Double).workers(2)) {
        Ok(server) => match server.call(21) {
            Ok(y) => println!("ok {y}"),
            Err(e) => {
                println!("call failed: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            println!("start failed after {} ms: {e}", t.elapsed().as_millis());
            std::process::exit(2);
        }
    }
}
