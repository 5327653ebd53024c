//! Runs every example in `examples/` with a small input and checks its output.
//!
//! `cargo test` builds the examples before running tests; `cargo test --test
//! examples` alone does not, so when an example binary is missing or older
//! than the sources, the tests ask cargo to build the examples first. The
//! binaries sit next to the test executable's folder:
//! `<target>/<profile>/examples/NAME`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// `<target>/<profile>`, from `<target>/<profile>/deps/examples-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds the examples once per test run, with the profile this test was
/// built with, into the same target folder.
fn build_examples() -> &'static Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let Some(target) = profile.parent() else {
            return Err("no target folder".into());
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--examples", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .env("CARGO_TARGET_DIR", target);
        match profile.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
            None => {}
        }
        let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "cargo build --examples failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
}

/// The newest modification time of the files an example binary is built from.
fn newest_source() -> SystemTime {
    fn walk(p: &Path, newest: &mut SystemTime) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(t) = meta.modified() {
            *newest = (*newest).max(t);
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = SystemTime::UNIX_EPOCH;
    for part in ["src", "examples", "Cargo.toml", "Cargo.lock"] {
        walk(&root.join(part), &mut newest);
    }
    newest
}

/// Runs `examples/NAME` with `args`; returns its output once it exited with
/// success, within `limit`.
fn run_example(name: &str, args: &[&str], limit: Duration) -> String {
    let bin = profile_dir().join("examples").join(name);
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_none_or(|t| t < newest_source())
        && let Err(e) = build_examples()
    {
        // A stale binary is better than none, but say why it may be stale.
        assert!(bin.exists(), "{e}");
        eprintln!("warning: {e}");
    }
    let started = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        status.success(),
        "{name} {args:?} failed ({status}).\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let took = started.elapsed();
    // Not a benchmark: a generous bound that only catches a hang.
    assert!(took < limit, "{name} took {took:?}");
    stdout
}

/// The line of `out` that starts with `prefix`, without the prefix.
fn field<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

#[test]
fn seed_prints_the_seed_answer() {
    let out = run_example("seed", &[], Duration::from_secs(60));
    assert_eq!(out, "Hello, wdwdwdwdwd!\nHello, 20!\n");
}

#[test]
fn batched_reports_each_batch_size_and_identical_results() {
    let out = run_example(
        "batched",
        &["--items", "48", "--dim", "64"],
        Duration::from_secs(60),
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("batch_size"))
        .skip(1)
        .take(4)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let sizes: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(sizes, ["0", "8", "32", "64"], "{out}");
    for r in &rows {
        let items_per_s: f64 = r[2].parse().unwrap_or_else(|_| panic!("{out}"));
        assert!(items_per_s > 0.0, "{out}");
        let mean_batch: f64 = r[3].parse().unwrap_or_else(|_| panic!("{out}"));
        let batch_size: f64 = r[0].parse().unwrap();
        assert!(
            mean_batch >= 1.0 && mean_batch <= batch_size.max(1.0),
            "{out}"
        );
    }
    assert_eq!(field(&out, "results identical across batch sizes: "), "yes");
}

#[test]
fn switch_routes_each_document() {
    let out = run_example("switch", &[], Duration::from_secs(60));
    let expected = "\
#0 short   4 words: \"The quick brown fox.\"
#1 long   32 words: most frequent long word \"servlets\" (3x)
error EmptyDocument: document 2 has no text
#3 short   2 words: \"Hello, world!\"
#4 long   36 words: most frequent long word \"member\" (2x)
error EmptyDocument: document 5 has no text
#6 short   2 words: \"Short again.\"
routes: short 3, long 2, empty 2
";
    assert_eq!(out, expected);
}

#[test]
fn large_file_streams_in_order_and_counts_bad_lines() {
    let out = run_example("large_file", &["--lines", "2000"], Duration::from_secs(60));
    assert_eq!(field(&out, "lines: "), "2000");
    assert_eq!(field(&out, "errors: "), "2");
    assert!(
        field(&out, "first error: ").contains("FormatError: line 997: no tab"),
        "{out}"
    );
    assert_eq!(field(&out, "order: "), "all results in input order");
    // The generated file is removed afterwards.
    let file = field(&out, "file: ");
    let path = file.split(" (").next().unwrap();
    assert!(!std::path::Path::new(path).exists(), "{path} left behind");
}

#[test]
fn async_tokio_serves_many_tasks() {
    let out = run_example("async_tokio", &["--tasks", "200"], Duration::from_secs(60));
    assert!(
        field(&out, "1. back-pressure off: ").starts_with("200/200 ok, errors []"),
        "{out}"
    );
    assert!(
        field(&out, "2. back-pressure on: ").starts_with("200 of 200 answered"),
        "{out}"
    );
    assert!(
        field(&out, "3. 1 ms limit: ").starts_with("timeout (request timed out"),
        "{out}"
    );
    assert_eq!(
        field(&out, "4. async_stream: "),
        "200 results, in input order: yes"
    );
}
