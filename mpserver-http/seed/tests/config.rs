//! `seed_http` takes the front's settings from `MPSERVER_HTTP_*` variables
//! (read by `HttpConfig::from_env`'s rules) and from flags, flags first; a
//! bad value stops it with the variable's name.

mod seed_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::Command;

use seed_support::Seed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_then_flags() {
    let body = format!("\"{}\"", "w".repeat(200));
    // From the environment: a 100-byte body limit.
    let seed = Seed::spawn_env(&[], &[("MPSERVER_HTTP_MAX_BODY_BYTES", Some("100"))]);
    seed.wait_ready().await;
    assert_eq!(seed.post("/call", body.clone()).await.status(), 413);
    drop(seed);
    // A flag wins over the variable.
    let seed = Seed::spawn_env(
        &["--max-body-bytes", "1000"],
        &[("MPSERVER_HTTP_MAX_BODY_BYTES", Some("100"))],
    );
    seed.wait_ready().await;
    assert_eq!(seed.post("/call", body).await.status(), 200);
}

#[test]
fn a_bad_value_names_its_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_seed_http"))
        .args(["--addr", "127.0.0.1:0"])
        .env("MPSERVER_HTTP_IDLE_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MPSERVER_HTTP_IDLE_TIMEOUT_MS"), "{err}");
}
