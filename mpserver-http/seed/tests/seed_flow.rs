//! The seed flow over HTTP (`seed_http`) with hostile input: wrong types are
//! 422 (the workers mark them as invalid input), integers are exact, and a
//! request that asks for a gigantic result fails alone without hurting the
//! server.

mod seed_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use seed_support::Seed;
use serde_json::Value;
use support::error_body;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_are_422_not_500() {
    let seed = Seed::spawn(&[]);
    seed.wait_ready().await;
    for body in [
        "5",
        "null",
        "{}",
        "\"\"",
        "[]",
        "true",
        "[\"a\",1]",
        "[1,[2]]",
        "[\"a\",\"b\",\"c\",null]",
    ] {
        let r = seed.post("/call", body).await;
        assert_eq!(r.status(), 422, "body {body}");
        let e = error_body(r).await;
        assert_eq!(e["class"], "invalid_input", "body {body}: {e}");
        assert!(
            ["TypeError", "IndexError", "KeyError"].contains(&e["type"].as_str().unwrap_or("")),
            "body {body}: {e}"
        );
    }
    // And good input still works.
    let r = seed.post("/call", "\"world\"").await;
    assert_eq!(r.json::<String>().await.unwrap(), "Hello, wdwdwdwdwd!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_are_exact_as_in_python() {
    let seed = Seed::spawn(&[]);
    seed.wait_ready().await;
    // Python: (x[0] + x[1]) * len(x).
    for (body, want) in [
        ("[9223372036854775807, 1]", "Hello, 18446744073709551616!"),
        (
            "[-9223372036854775808, -1]",
            "Hello, -18446744073709551618!",
        ),
        (
            "[18446744073709551615, 1, 7]",
            "Hello, 55340232221128654866!",
        ),
        ("[1, 2, 3, 4]", "Hello, 20!"),
        ("[1.5, 2]", "Hello, 7.0!"),
        ("[true, 2]", "Hello, 6!"),
        ("[[1], 0, [2]]", "Hello, [1,2,1,2,1,2]!"),
    ] {
        let r = seed.post("/call", body).await;
        assert_eq!(r.status(), 200, "body {body}");
        assert_eq!(r.json::<String>().await.unwrap(), want, "body {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_gigantic_result_fails_alone() {
    let mut seed = Seed::spawn(&[]);
    seed.wait_ready().await;
    // About 1.9 MB that asks the combine step (a thread in the server
    // process) for (1 MB string) * 450,000: some 450 GB.
    let half = "a".repeat(500_000);
    let mut body = format!("[\"{half}\"");
    body.push_str(&",0".repeat(450_000));
    body.push_str(&format!(",\"{half}\"]"));
    assert!(body.len() < 2 * 1024 * 1024);
    let big = seed.post("/call", body);
    let small = seed.post("/call", "\"world\"");
    let (big, small) = tokio::join!(big, small);
    assert_eq!(small.status(), 200);
    assert_eq!(big.status(), 422);
    let e = error_body(big).await;
    assert_eq!(e["type"], "ValueError", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("over the limit"),
        "{e}"
    );
    assert!(seed.running(), "the server died");
    let r = seed.post("/call", "[1, 2, 3, 4]").await;
    assert_eq!(r.json::<String>().await.unwrap(), "Hello, 20!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_requests_leave_memory_bounded() {
    // Without RUST_BACKTRACE: with it, the first worker error that captures a
    // backtrace loads the binary's debug information (tens of MiB, once).
    let seed = Seed::spawn_env(
        &[],
        &[("RUST_BACKTRACE", None), ("RUST_LIB_BACKTRACE", None)],
    );
    seed.wait_ready().await;
    let before = seed.rss_kib();
    // 2 MB of JSON in, 4 MB out: within the limits.
    let s = "x".repeat(1_000_000);
    let body = format!("[\"{s}\", \"{s}\"]");
    for _ in 0..3 {
        let r = seed.post("/call", body.clone()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 4_000_010);
    }
    // 1 MB asking for 100 MB: over the 16 MiB default limit, 422.
    let s = "x".repeat(500_000);
    let mut body = format!("[\"{s}\"");
    body.push_str(&",0".repeat(100));
    body.push_str(&format!(",\"{s}\"]"));
    for _ in 0..3 {
        let r = seed.post("/call", body.clone()).await;
        assert_eq!(r.status(), 422);
    }
    let after = seed.rss_kib();
    eprintln!("RSS before {before} KiB, after {after} KiB");
    assert!(
        after < before + 100 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    let v: Value = seed
        .client
        .get(seed.url("/debug"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["backlog"], 0);
}
