//! The benchmark protocol's load guard: waits for a quiet machine, runs one
//! benchmark command while recording the CPU load of every *other* process,
//! reruns it when that load was too high, and annotates its figures.
//!
//! ```text
//! loadwatch wait [OPTIONS]
//! loadwatch run --out FILE [OPTIONS] -- COMMAND [ARGS...]
//!
//! OPTIONS
//!   --max-foreign C    foreign load limit, in cores (default 0.10)
//!   --quiet-for S      seconds the machine must stay below the limit (default 3)
//!   --quiet-timeout S  give up waiting after S seconds and carry on (default 60)
//!   --retries N        reruns when the load during the run exceeded the limit (default 2)
//!   --setting TEXT     record the contender's non-default setting in its figures
//!   --budget-file F    file holding the seconds of protocol time (quiet waits
//!                      and reruns) already spent by earlier invocations
//!   --budget S         the total protocol time allowed over those invocations
//!                      (default: unlimited); once spent, nothing waits or reruns
//! ```
//!
//! "Foreign" load is the machine's busy CPU time (`/proc/stat`) minus the
//! CPU time of this process and all its descendants (the benchmark, its
//! worker processes and threads), in cores. `run` appends the command's
//! JSON-lines figures to `--out`, each with `foreign_load` (mean foreign load
//! during the accepted attempt), `attempts`, `noisy` (the load stayed above
//! the limit after every retry, or the machine was never quiet before it) and
//! `setting`. The command's stderr passes through; its exit status is
//! returned. `wait` exits 0 when the machine became quiet, 3 when it timed
//! out (after saying so).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpserver_benches::load::ForeignLoad;

#[derive(Debug, Clone)]
struct Opts {
    max_foreign: f64,
    quiet_for: f64,
    quiet_timeout: f64,
    retries: u32,
    setting: Option<String>,
    out: Option<String>,
    command: Vec<String>,
    budget_file: Option<String>,
    budget: f64,
}

impl Opts {
    /// Protocol seconds already spent (from the budget file).
    fn spent(&self) -> f64 {
        self.budget_file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Protocol seconds still allowed.
    fn remaining(&self) -> f64 {
        (self.budget - self.spent()).max(0.0)
    }

    /// Records `secs` more protocol seconds in the budget file.
    fn spend(&self, secs: f64) {
        if let Some(f) = &self.budget_file {
            let _ = std::fs::write(f, format!("{:.1}\n", self.spent() + secs));
        }
    }
}

fn parse(args: &[String]) -> Result<(String, Opts), String> {
    let mode = args.first().cloned().ok_or("expected `wait` or `run`")?;
    let mut o = Opts {
        max_foreign: 0.10,
        quiet_for: 3.0,
        quiet_timeout: 60.0,
        retries: 2,
        setting: None,
        out: None,
        command: vec![],
        budget_file: None,
        budget: f64::INFINITY,
    };
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> Result<String, String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{name}: not a non-negative number: {v:?}"))
        };
        match a.as_str() {
            "--max-foreign" => o.max_foreign = num(a, val(a)?)?,
            "--quiet-for" => o.quiet_for = num(a, val(a)?)?,
            "--quiet-timeout" => o.quiet_timeout = num(a, val(a)?)?,
            "--retries" => o.retries = num(a, val(a)?)? as u32,
            "--setting" => o.setting = Some(val(a)?).filter(|s| !s.is_empty()),
            "--out" => o.out = Some(val(a)?),
            "--budget-file" => o.budget_file = Some(val(a)?),
            "--budget" => o.budget = num(a, val(a)?)?,
            "--" => {
                o.command = it.cloned().collect();
                break;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match mode.as_str() {
        "wait" => {}
        "run" if o.out.is_some() && !o.command.is_empty() => {}
        "run" => return Err("run needs --out FILE and -- COMMAND".into()),
        other => return Err(format!("unknown mode {other:?} (expected wait or run)")),
    }
    Ok((mode, o))
}

/// Waits until the foreign load stayed below the limit for `quiet_for`
/// seconds (1-second windows), at most `quiet_timeout` seconds. Returns
/// whether the machine became quiet.
fn wait_quiet(o: &Opts) -> bool {
    let timeout = o.quiet_timeout.min(o.remaining());
    if o.quiet_timeout == 0.0 {
        return true;
    }
    if timeout == 0.0 {
        eprintln!(
            "loadwatch: the protocol's time budget is spent: not waiting for a quiet machine"
        );
        return false;
    }
    let Ok(mut meter) = ForeignLoad::start(std::process::id()) else {
        eprintln!("loadwatch: cannot read /proc; not waiting for a quiet machine");
        return false;
    };
    let start = Instant::now();
    let mut quiet_since = 0.0f64;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Ok((load, dt)) = meter.sample() else {
            return false;
        };
        if load < o.max_foreign {
            quiet_since += dt.as_secs_f64();
            if quiet_since >= o.quiet_for {
                return true;
            }
        } else {
            quiet_since = 0.0;
        }
        if start.elapsed().as_secs_f64() >= timeout {
            eprintln!(
                "loadwatch: the machine was never quiet (other processes below {:.2} core for \
                 {:.0} s) within {:.0} s (last foreign load {:.2} cores); carrying on, figures \
                 marked noisy",
                o.max_foreign, o.quiet_for, timeout, load
            );
            return false;
        }
    }
}

/// One attempt: runs the command, sampling the foreign load every 250 ms.
/// Returns (success, stdout lines, mean foreign load, peak 1-second load).
fn attempt(o: &Opts) -> std::io::Result<(bool, Vec<String>, f64, f64)> {
    let mut meter = ForeignLoad::start(std::process::id())?;
    let mut child = Command::new(&o.command[0])
        .args(&o.command[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let done = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(f64, Duration)>>> = Arc::default();
    let sampler = {
        let (done, samples) = (done.clone(), samples.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if let Ok(s) = meter.sample() {
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }
            }
            // The tail of the run.
            if let Ok(s) = meter.sample() {
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
        })
    };
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let total: f64 = samples.iter().map(|(l, d)| l * d.as_secs_f64()).sum();
    let secs: f64 = samples.iter().map(|(_, d)| d.as_secs_f64()).sum();
    let mean = if secs > 0.0 { total / secs } else { 0.0 };
    // Peak over windows of 4 samples (about a second).
    let peak = samples
        .windows(4.min(samples.len()).max(1))
        .map(|w| {
            let t: f64 = w.iter().map(|(_, d)| d.as_secs_f64()).sum();
            w.iter().map(|(l, d)| l * d.as_secs_f64()).sum::<f64>() / t.max(1e-3)
        })
        .fold(0.0, f64::max);
    Ok((status.success(), lines, mean, peak))
}

fn run(o: &Opts) -> Result<bool, String> {
    let out = o.out.as_deref().expect("checked by parse");
    let tries = o.retries + 1;
    let mut result = None;
    for k in 1..=tries {
        let waited = Instant::now();
        let quiet = wait_quiet(o);
        o.spend(waited.elapsed().as_secs_f64());
        let ran = Instant::now();
        let (ok, lines, mean, peak) =
            attempt(o).map_err(|e| format!("running {:?}: {e}", o.command[0]))?;
        if k > 1 {
            o.spend(ran.elapsed().as_secs_f64());
        }
        eprintln!(
            "loadwatch: foreign load during the run: mean {mean:.2}, peak {peak:.2} cores \
             (limit {:.2}){}",
            o.max_foreign,
            if quiet {
                ""
            } else {
                "; machine not quiet before it"
            }
        );
        let over = mean > o.max_foreign;
        result = Some((ok, lines, mean, k, over || !quiet));
        if !ok || !over {
            break;
        }
        if o.remaining() == 0.0 {
            eprintln!(
                "loadwatch: over the limit, but the protocol's time budget is spent: no rerun"
            );
            break;
        }
        if k < tries {
            eprintln!(
                "loadwatch: over the limit: rerunning (attempt {} of {tries})",
                k + 1
            );
        }
    }
    let (ok, lines, mean, attempts, noisy) = result.expect("at least one attempt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .map_err(|e| format!("opening {out}: {e}"))?;
    for line in lines {
        let Ok(serde_json::Value::Object(mut fig)) = serde_json::from_str(&line) else {
            continue;
        };
        fig.insert(
            "foreign_load".into(),
            (((mean * 1000.0).round()) / 1000.0).into(),
        );
        fig.insert("attempts".into(), attempts.into());
        if noisy {
            fig.insert("noisy".into(), true.into());
        }
        if let Some(s) = &o.setting {
            fig.insert("setting".into(), s.clone().into());
        }
        writeln!(file, "{}", serde_json::Value::Object(fig)).map_err(|e| e.to_string())?;
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, o) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadwatch: {e}");
            eprintln!(
                "usage: loadwatch wait|run [--max-foreign C] [--quiet-for S] [--quiet-timeout S] [--retries N] [--setting T] [--out FILE -- COMMAND...]"
            );
            return ExitCode::from(2);
        }
    };
    if mode == "wait" {
        return if wait_quiet(&o) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        };
    }
    match run(&o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadwatch: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_modes_and_options() {
        let (m, o) = parse(&s(&[
            "run",
            "--out",
            "f.jsonl",
            "--retries",
            "1",
            "--setting",
            "capacity=1024",
            "--",
            "prog",
            "--x",
        ]))
        .unwrap();
        assert_eq!(m, "run");
        assert_eq!(o.retries, 1);
        assert_eq!(o.command, s(&["prog", "--x"]));
        assert_eq!(o.setting.as_deref(), Some("capacity=1024"));
        assert!(parse(&s(&["run", "--out", "f"])).is_err());
        assert!(parse(&s(&["wait", "--quiet-timeout", "-1"])).is_err());
        assert!(parse(&s(&["bogus"])).is_err());
        let (_, o) = parse(&s(&["wait", "--quiet-timeout", "0"])).unwrap();
        assert!(wait_quiet(&o), "a zero timeout does not wait");
    }

    #[test]
    fn run_annotates_figures_and_never_hangs_on_a_busy_machine() {
        let dir = std::env::temp_dir().join(format!("loadwatch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.jsonl");
        let line = r#"{"contender":"raw","scenario":"R1","placement":"pinned1","metric":"m","unit":"us","runs":[1.0],"median":1.0,"min":1.0,"max":1.0}"#;
        let o = Opts {
            // An impossible limit: every attempt is over it, so the figure
            // is marked noisy after the retries, and waiting times out.
            max_foreign: 0.0,
            quiet_for: 1.0,
            quiet_timeout: 1.0,
            retries: 1,
            setting: Some("capacity=1024".into()),
            out: Some(out.to_string_lossy().into()),
            command: s(&["sh", "-c", &format!("echo 'progress'; echo '{line}'")]),
            budget_file: Some(dir.join("budget").to_string_lossy().into()),
            budget: 100.0,
        };
        let t = Instant::now();
        assert!(run(&o).unwrap());
        assert!(t.elapsed() < Duration::from_secs(60));
        let text = std::fs::read_to_string(&out).unwrap();
        let figs: Vec<mpserver_benches::Figure> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(figs.len(), 1, "{text}");
        let f = &figs[0];
        assert!(f.noisy);
        assert!(f.foreign_load.is_some());
        assert_eq!(f.setting.as_deref(), Some("capacity=1024"));
        // Retried only if the foreign load was above zero: 1 or 2 attempts.
        assert!(matches!(f.attempts, Some(1 | 2)), "{:?}", f.attempts);
        // The wait (about 1 s per attempt) was charged to the budget.
        assert!(o.spent() >= 0.9, "spent {}", o.spent());
        // A spent budget: no waiting at all.
        let spent = Opts {
            budget: 0.5,
            ..o.clone()
        };
        let t = Instant::now();
        assert!(!wait_quiet(&spent));
        assert!(t.elapsed() < Duration::from_millis(500));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
