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
    /// CPU placement the figure was measured under (`"pinned1"`/`"unpinned"`/`"split"`).
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
    /// Mean CPU load of *other* processes (in cores) while this figure was
    /// measured, the largest over its runs; set by `loadwatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_load: Option<f64>,
    /// The foreign load stayed above the protocol's limit after every retry
    /// (or the machine was never quiet before the scenario): treat as noisy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub noisy: bool,
    /// Attempts the figure took (1 = measured once); the largest over its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The contender's non-default setting used for this scenario, e.g.
    /// `capacity=1024`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
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
            foreign_load: None,
            noisy: false,
            attempts: None,
            setting: None,
        }
    }

    /// Adds `other`'s runs (the same figure measured by another invocation)
    /// to this one and recomputes the summary; protocol fields keep the
    /// worst (largest load and attempts, noisy if either is).
    pub fn merge(&mut self, other: &Figure) {
        self.runs.extend_from_slice(&other.runs);
        if let Some((median, min, max)) = summarize(&self.runs) {
            (self.median, self.min, self.max) = (median, min, max);
        }
        self.foreign_load = match (self.foreign_load, other.foreign_load) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.attempts = self.attempts.max(other.attempts);
        self.noisy |= other.noisy;
        if self.setting.is_none() {
            self.setting.clone_from(&other.setting);
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
    /// The contender's main process (the caller and the server's own
    /// threads) on CPU 0, every worker process on CPU 1: the two ends of a
    /// call always on different CPUs, the case that `unpinned` falls into
    /// in some runs and not others (measured for S1 and R1).
    Split,
}

impl Placement {
    /// The placements every scenario is measured under, in the order they
    /// are usually run (`split` is measured for S1 and R1 only).
    pub const ALL: [Placement; 2] = [Placement::Pinned1, Placement::Unpinned];
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Pinned1 => "pinned1",
            Placement::Unpinned => "unpinned",
            Placement::Split => "split",
        })
    }
}

impl FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pinned1" => Ok(Placement::Pinned1),
            "unpinned" => Ok(Placement::Unpinned),
            "split" => Ok(Placement::Split),
            other => Err(format!(
                "unknown placement {other:?} (expected pinned1, unpinned or split)"
            )),
        }
    }
}

/// Restricts the calling process (and every process it later creates) to
/// CPU 0. Threads created afterwards inherit the mask as well.
pub fn pin_to_cpu0() -> nix::Result<()> {
    pin_to_cpu(0)
}

/// Restricts the calling thread (and every thread and process it later
/// creates) to CPU `cpu`.
pub fn pin_to_cpu(cpu: usize) -> nix::Result<()> {
    set_cpus(&[cpu])
}

/// Restricts the calling thread (and every thread and process it later
/// creates) to `cpus`, e.g. back to the set [`current_cpus`] gave earlier.
pub fn set_cpus(cpus: &[usize]) -> nix::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;

    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// Moves every thread of this process to CPU `cpu`; threads they create
/// later inherit it. For the `split` placement: a server's own threads,
/// started while the process could still use CPU 1 (a worker can only be
/// pinned to a CPU its parent may use), join the caller on CPU 0 after the
/// start. A thread that exits meanwhile is skipped.
pub fn pin_all_threads_to(cpu: usize) -> nix::Result<()> {
    use nix::errno::Errno;
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;

    let mut set = CpuSet::new();
    set.set(cpu)?;
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)))?;
    for entry in tasks.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
/// `--placement pinned1|unpinned|split`, `--runs N`, `--scenarios A,B,...`, `--quick`,
/// `--list`.
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
    /// `--list`: print the scenario ids the program defines and exit.
    pub list: bool,
}

impl Default for CommonArgs {
    fn default() -> Self {
        Self {
            placement: Placement::Unpinned,
            runs: 3,
            scenarios: None,
            quick: false,
            list: false,
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
                "--list" => out.list = true,
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

/// CPU load of the machine and of a process tree, from `/proc`: what the
/// benchmark protocol needs to wait for a quiet machine and to record the
/// load other processes put on it during a scenario.
pub mod load {
    use std::collections::HashMap;
    use std::fs;
    use std::io;
    use std::time::{Duration, Instant};

    /// Clock ticks per second of the times in `/proc/stat` and
    /// `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux for every architecture
    /// the suite runs on).
    pub const TICKS_PER_SECOND: f64 = 100.0;

    /// Busy ticks of all CPUs since boot from the `cpu` line of `/proc/stat`:
    /// user + nice + system + irq + softirq + steal (idle and iowait are not
    /// busy; guest time is already inside user).
    pub fn parse_machine_busy(stat: &str) -> Option<u64> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0))
    }

    /// `(ppid, utime + stime + cutime + cstime)` from one `/proc/<pid>/stat`
    /// line (the command name in parentheses may hold spaces and parentheses).
    pub fn parse_proc_stat(line: &str) -> Option<(u32, u64)> {
        let rest = &line[line.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
        let ppid = f.get(1)?.parse().ok()?;
        let mut ticks = 0u64;
        for i in 11..=14 {
            ticks += f.get(i)?.parse::<i64>().ok()?.max(0) as u64;
        }
        Some((ppid, ticks))
    }

    /// Busy ticks of the whole machine now.
    pub fn machine_busy() -> io::Result<u64> {
        parse_machine_busy(&fs::read_to_string("/proc/stat")?)
            .ok_or_else(|| io::Error::other("cannot parse the cpu line of /proc/stat"))
    }

    /// CPU ticks used by process `root` and all its live descendants,
    /// including those of their children already waited for (`cutime`,
    /// `cstime`), so a worker that exits and is reaped inside the tree is
    /// still counted.
    pub fn tree_ticks(root: u32) -> u64 {
        let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat"))
                    && let Some(p) = parse_proc_stat(&text)
                {
                    procs.insert(pid, p);
                }
            }
        }
        sum_tree(root, &procs)
    }

    /// Sum of the ticks of `root` and its descendants in a `pid -> (ppid,
    /// ticks)` table.
    pub fn sum_tree(root: u32, procs: &HashMap<u32, (u32, u64)>) -> u64 {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&pid, &(ppid, _)) in procs {
            children.entry(ppid).or_default().push(pid);
        }
        let mut total = 0;
        let mut todo = vec![root];
        while let Some(p) = todo.pop() {
            total += procs.get(&p).map_or(0, |x| x.1);
            if let Some(c) = children.get(&p) {
                todo.extend(c.iter().copied().filter(|&c| c != p));
            }
        }
        total
    }

    /// Measures the CPU load of processes outside one process tree (ours):
    /// machine busy time minus the tree's, in cores.
    pub struct ForeignLoad {
        root: u32,
        at: Instant,
        busy: u64,
        tree: u64,
    }

    impl ForeignLoad {
        /// Starts measuring, with the tree of process `root` counted as ours.
        pub fn start(root: u32) -> io::Result<Self> {
            Ok(ForeignLoad {
                root,
                at: Instant::now(),
                busy: machine_busy()?,
                tree: tree_ticks(root),
            })
        }

        /// The mean foreign load (cores) since the previous call (or the
        /// start), and the length of that interval.
        pub fn sample(&mut self) -> io::Result<(f64, Duration)> {
            let (busy, tree, now) = (machine_busy()?, tree_ticks(self.root), Instant::now());
            let dt = now - self.at;
            let ours = tree.saturating_sub(self.tree);
            let foreign = busy.saturating_sub(self.busy).saturating_sub(ours);
            (self.at, self.busy, self.tree) = (now, busy, tree);
            let secs = dt.as_secs_f64().max(1e-3);
            Ok((foreign as f64 / TICKS_PER_SECOND / secs, dt))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_proc_stat_lines() {
            let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
            assert_eq!(parse_machine_busy(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
            let line = "1234 (my (odd) name) S 77 1234 1234 0 -1 4194304 10 0 0 0 \
                        40 7 3 2 20 0 4 0 100 1000 200";
            assert_eq!(parse_proc_stat(line), Some((77, 40 + 7 + 3 + 2)));
            assert_eq!(parse_proc_stat("garbage"), None);
        }

        #[test]
        fn sums_a_process_tree() {
            let procs: HashMap<u32, (u32, u64)> = [
                (1, (0, 1000)),
                (10, (1, 5)),
                (11, (10, 7)),
                (12, (10, 11)),
                (13, (11, 13)),
                (20, (1, 500)),
            ]
            .into_iter()
            .collect();
            assert_eq!(sum_tree(10, &procs), 5 + 7 + 11 + 13);
            assert_eq!(sum_tree(11, &procs), 7 + 13);
            assert_eq!(sum_tree(99, &procs), 0);
        }

        #[test]
        fn our_own_work_is_not_foreign() {
            // Burn ~0.3 s of CPU in this process: machine busy time grows,
            // but the tree (this process) accounts for it.
            let me = std::process::id();
            let mut m = ForeignLoad::start(me).unwrap();
            let t = Instant::now();
            let mut x = 1u64;
            while t.elapsed() < Duration::from_millis(300) {
                x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
            }
            let before = tree_ticks(me);
            assert!(before > 0, "our own ticks are seen");
            let (foreign, dt) = m.sample().unwrap();
            assert!(dt >= Duration::from_millis(300));
            // Other processes may run on a shared machine, but never more
            // than all CPUs.
            let cpus = std::thread::available_parallelism().map_or(64, |n| n.get()) as f64;
            assert!((0.0..=cpus + 0.5).contains(&foreign), "foreign {foreign}");
        }
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
    fn placements_parse_what_they_print() {
        for p in [Placement::Pinned1, Placement::Unpinned, Placement::Split] {
            assert_eq!(p.to_string().parse::<Placement>(), Ok(p));
        }
        assert_eq!("split".parse::<Placement>(), Ok(Placement::Split));
        assert!("pinned2".parse::<Placement>().is_err());
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
    fn merged_figures_pool_runs_and_keep_the_worst_conditions() {
        let mut a = Figure::new("x", "S1", Placement::Unpinned, "m", "1/s", vec![1.0, 5.0]);
        a.foreign_load = Some(0.05);
        let mut b = Figure::new("x", "S1", Placement::Unpinned, "m", "1/s", vec![3.0]);
        b.foreign_load = Some(0.4);
        b.noisy = true;
        b.attempts = Some(3);
        b.setting = Some("capacity=1024".into());
        a.merge(&b);
        assert_eq!(a.runs, [1.0, 5.0, 3.0]);
        assert_eq!((a.median, a.min, a.max), (3.0, 1.0, 5.0));
        assert_eq!(a.foreign_load, Some(0.4));
        assert!(a.noisy);
        assert_eq!(a.attempts, Some(3));
        assert_eq!(a.setting.as_deref(), Some("capacity=1024"));
        // Old lines without the protocol fields still parse.
        let old = r#"{"contender":"raw","scenario":"R1","placement":"pinned1","metric":"m","unit":"us","runs":[1.0],"median":1.0,"min":1.0,"max":1.0}"#;
        let f: Figure = serde_json::from_str(old).unwrap();
        assert!(!f.noisy && f.foreign_load.is_none());
        assert!(!f.to_json_line().contains("noisy"));
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
