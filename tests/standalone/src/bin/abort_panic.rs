//! Panics in a program built with `panic = "abort"` (this crate's profile).
//!
//! `abort_panic process`: a process worker panics on one item; the caller of
//! that item gets the panic's message and location, the worker is restarted
//! and the next call succeeds. Prints `process: <error>` then `next: <value>`.
//!
//! `abort_panic thread`: a thread worker panics; the whole process aborts
//! (nothing can unwind), but the message and location reach stderr first.
//!
//! `abort_panic init`: a process worker's `init` panics; the start fails
//! with the panic's message and location. Prints `init: <error>`.

use mpserver::{ProcessServlet, Server, ThreadServlet, Worker, WorkerError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Fragile {
    panic_in_init: bool,
}

impl Worker for Fragile {
    type Input = u64;
    type Output = u64;
    fn init(&mut self, _: &mpserver::WorkerContext) -> Result<(), WorkerError> {
        if self.panic_in_init {
            panic!("fragile worker cannot start");
        }
        Ok(())
    }
    fn call(&mut self, x: u64) -> Result<u64, WorkerError> {
        if x == 2 {
            panic!("fragile worker cannot take {x}");
        }
        Ok(10 * x)
    }
}

fn main() {
    mpserver::init();
    match std::env::args().nth(1).as_deref() {
        Some("process") => {
            let server = Server::start(ProcessServlet::new(Fragile {
                panic_in_init: false,
            }))
            .expect("start");
            assert_eq!(server.call(1).expect("first call"), 10);
            match server.call(2) {
                Ok(y) => println!("process: no error ({y})"),
                Err(e) => println!("process: {e}"),
            }
            match server.call(3) {
                Ok(y) => println!("next: {y}"),
                Err(e) => println!("next: failed: {e}"),
            }
        }
        Some("thread") => {
            let server = Server::start(ThreadServlet::new(Fragile {
                panic_in_init: false,
            }))
            .expect("start");
            let _ = server.call(2);
            println!("thread: survived (impossible with panic = \"abort\")");
        }
        Some("init") => match Server::start(ProcessServlet::new(Fragile {
            panic_in_init: true,
        })) {
            Ok(_) => println!("init: started (impossible)"),
            Err(e) => println!("init: {e}"),
        },
        _ => {
            eprintln!("usage: abort_panic process|thread|init");
            std::process::exit(2);
        }
    }
}
