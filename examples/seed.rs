//! The example of the seed documentation (`mpservice.mpserver`), in Rust.
//!
//! GetHead, GetTail and GetLen run in an ensemble of process servlets pinned as
//! in the seed; a closure combines their results in a thread; Solute runs in a
//! process. Values are dynamic (`serde_json::Value`), mirroring Python. The
//! workers themselves are in `examples/shared/seed_workers.rs`, shared with
//! the HTTP front's `seed_http` and the benchmarks.
//!
//! Run: `cargo run --release --example seed`

use mpserver::Codec;
use mpserver::prelude::*;
use serde_json::json;

// Not every item is used by every includer.
#[allow(dead_code)]
#[path = "shared/seed_workers.rs"]
mod seed_workers;
use seed_workers::{GetHead, GetLen, GetTail, Solute, combine};

fn main() -> Result<(), mpserver::Error> {
    let servlet = sequential![
        ensemble![
            ProcessServlet::new(GetHead)
                .cpus([0])
                .codec(Codec::MessagePack),
            ProcessServlet::new(GetTail)
                .cpus([0, 1])
                .codec(Codec::MessagePack),
            ProcessServlet::new(GetLen)
                .cpus([1])
                .codec(Codec::MessagePack),
        ],
        ThreadServlet::new(try_worker_fn(combine)),
        ProcessServlet::new(Solute).codec(Codec::MessagePack),
    ];
    let server = Server::start(servlet)?;

    let y = server.call(json!("world"))?;
    println!("{}", y.as_str().unwrap_or_default());

    let y = server.call(json!([1, 2, 3, 4]))?;
    println!("{}", y.as_str().unwrap_or_default());
    Ok(())
}
