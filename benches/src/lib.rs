//! Shared pieces of the `mpserver` benchmark suite.
//!
//! Every benchmark program (the raw-limit probe, the Python `mpservice`
//! script, the `mpserver` scenarios) prints one JSON object per line on
//! stdout, one per *figure*:
//!
//! ```json
//! {"contender": "raw", "scenario": "R1_roundtrip", "placement": "pinned1",
//!  "metric": "p50_us", "unit": "us", "runs": [11.2, 11.0, 11.4],
//!  "median": 11.2, "min": 11.0, "max": 11.4}
//! ```
//!
//! This crate provides the record type ([`Figure`]), its summary statistics,
//! the CPU-placement switch shared by all contenders ([`Placement`]) and a
//! tiny command-line parser for the common flags ([`CommonArgs`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One benchmark figure: a metric measured in several runs, with its summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Who was measured: `"mpserver"`, `"mpservice-0.12.9"`, `"raw"`, ...
    pub contender: String,
    /// Scenario id, e.g. `"S1_seq_call"` or `"R1_roundtrip"`.
    pub scenario: String,
    /// CPU placement the figure was measured under (`"pinned1"`/`"unpinned"`).
    pub placement: String,
    /// Metric name, e.g. `"calls_per_s"` or `"p99_us"`.
    pub metric: String,
    /// Unit of the metric, e.g. `"1/s"`, `"us"`, `"MB/s"`.
    pub unit: String,
    /// The value measured in each run.
    pub runs: Vec<f64>,
    /// Median of `runs` (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value in `runs`.
    pub min: f64,
    /// Largest value in `runs`.
    pub max: f64,
}

impl Figure {
    /// Builds a figure from its per-run values, computing median, min and max.
    ///
    /// # Panics
    ///
    /// Panics if `runs` is empty.
    pub fn new(
        contender: &str,
        scenario: &str,
        placement: Placement,
        metric: &str,
        unit: &str,
        runs: Vec<f64>,
    ) -> Self {
        let (median, min, max) = summarize(&runs).expect("a figure needs at least one run");
        Self {
            contender: contender.to_owned(),
            scenario: scenario.to_owned(),
            placement: placement.to_string(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            runs,
            median,
            min,
            max,
        }
    }

    /// Serialises the figure as a single JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a Figure always serialises")
    }
}

/// Returns `(median, min, max)` of `values`, or `None` when it is empty.
///
/// The median of an even number of values is the mean of the two middle ones.
pub fn summarize(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some((median, sorted[0], sorted[n - 1]))
}

/// Where the contender's processes may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Every process of the contender is restricted to CPU 0.
    Pinned1,
    /// No CPU restriction.
    Unpinned,
}

impl Placement {
    /// Both placements, in the order they are usually run.
    pub const ALL: [Placement; 2] = [Placement::Pinned1, Placement::Unpinned];
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Pinned1 => "pinned1",
            Placement::Unpinned => "unpinned",
        })
    }
}

impl FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pinned1" => Ok(Placement::Pinned1),
            "unpinned" => Ok(Placement::Unpinned),
            other => Err(format!(
                "unknown placement {other:?} (expected pinned1 or unpinned)"
            )),
        }
    }
}

/// Restricts the calling process (and every process it later creates) to
/// CPU 0. Threads created afterwards inherit the mask as well.
pub fn pin_to_cpu0() -> nix::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;

    let mut set = CpuSet::new();
    set.set(0)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// Lists the CPUs the calling process may currently run on.
pub fn current_cpus() -> nix::Result<Vec<usize>> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;

    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect())
}

/// The command-line flags every benchmark program accepts:
/// `--placement pinned1|unpinned`, `--runs N`, `--scenarios A,B,...`, `--quick`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommonArgs {
    /// CPU placement to measure under (default: unpinned).
    pub placement: Placement,
    /// Number of runs per figure (default: 3).
    pub runs: usize,
    /// Scenario ids or prefixes to run (`R1`, `S2`, ...); `None` means all.
    pub scenarios: Option<Vec<String>>,
    /// Smaller counts, for a smoke test.
    pub quick: bool,
}

impl Default for CommonArgs {
    fn default() -> Self {
        Self {
            placement: Placement::Unpinned,
            runs: 3,
            scenarios: None,
            quick: false,
        }
    }
}

impl CommonArgs {
    /// Parses the common flags from `args` (without the program name).
    ///
    /// Both `--flag value` and `--flag=value` are accepted.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, String> {
        let mut out = CommonArgs::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                "--placement" => out.placement = value("--placement")?.parse()?,
                "--runs" => {
                    let v = value("--runs")?;
                    out.runs = v
                        .parse()
                        .ok()
                        .filter(|&n: &usize| n >= 1)
                        .ok_or_else(|| format!("--runs needs a positive integer, got {v:?}"))?;
                }
                "--scenarios" => {
                    let v = value("--scenarios")?;
                    out.scenarios = Some(
                        v.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    );
                }
                "--quick" => out.quick = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(out)
    }

    /// Whether scenario `id` (e.g. `"R2_stream"`) was selected: either no
    /// `--scenarios` filter was given, or one entry equals `id` or its prefix
    /// before the first underscore (`"R2"`), case-insensitively.
    pub fn wants(&self, id: &str) -> bool {
        let short = id.split('_').next().unwrap_or(id);
        match &self.scenarios {
            None => true,
            Some(list) => list
                .iter()
                .any(|s| s.eq_ignore_ascii_case(id) || s.eq_ignore_ascii_case(short)),
        }
    }
}

/// Runs of S6 (and of its raw counterpart R4) at least: a speedup is a ratio
/// of two noisy rates.
pub const S6_MIN_RUNS: usize = 5;

/// S6's unit of pure CPU work: `loops` steps of a linear congruential
/// generator (the Python contenders run the same recurrence).
pub fn lcg_work(loops: u64, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..loops {
        x = (x.wrapping_mul(1_103_515_245).wrapping_add(12_345)) & 0x7fff_ffff;
    }
    x
}

/// The number of [`lcg_work`] steps that take about 2 ms on this CPU.
pub fn loops_for_2ms() -> u64 {
    let mut loops = 100_000u64;
    loop {
        let t = std::time::Instant::now();
        std::hint::black_box(lcg_work(loops, 1));
        let e = t.elapsed();
        if e >= std::time::Duration::from_millis(20) {
            return (loops as f64 * 2e-3 / e.as_secs_f64()) as u64;
        }
        loops *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn parses_common_flags() {
        let args = [
            "--placement",
            "pinned1",
            "--runs=5",
            "--scenarios",
            "R1,r3_echo_1mb",
            "--quick",
        ]
        .map(String::from);
        let a = CommonArgs::parse(args).unwrap();
        assert_eq!(a.placement, Placement::Pinned1);
        assert_eq!(a.runs, 5);
        assert!(a.quick);
        assert!(a.wants("R1_roundtrip"));
        assert!(!a.wants("R2_stream"));
        assert!(a.wants("R3_echo_1mb"));
        assert!(CommonArgs::parse(["--runs", "0"].map(String::from)).is_err());
        assert!(CommonArgs::parse(["--bogus"].map(String::from)).is_err());
    }

    #[test]
    fn figure_json_round_trip() {
        let f = Figure::new(
            "raw",
            "R1_roundtrip",
            Placement::Unpinned,
            "p50_us",
            "us",
            vec![2.0, 1.0, 3.0],
        );
        let back: Figure = serde_json::from_str(&f.to_json_line()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.median, 2.0);
    }
}
