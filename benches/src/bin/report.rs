//! Combines benchmark JSON-lines files into a Markdown table, a JSON summary
//! and a PNG bar chart.
//!
//! ```text
//! report [--json PATH] [--md PATH] [--png PATH] FILE...
//! ```
//!
//! Each input file holds one [`Figure`] per line, from any contender
//! (`mpserver`, `mpservice-0.12.9`, `mpservice-0.16.8`, `raw`, ...). For each
//! scenario / placement / metric the table shows every contender's median
//! with its [min–max] range, how `mpserver` compares with the better
//! `mpservice` (oriented so that > 1 always means `mpserver` is better), and
//! how `mpserver` and the better `mpservice` compare with the raw IPC limit
//! where a raw counterpart exists. Missing contenders show as "n/a".
//!
//! Defaults, relative to the repository root: `docs/bench/results.json`,
//! `docs/bench/table.md`, `docs/bench/ratios.png`. The table is also printed
//! on stdout.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mpserver_benches::Figure;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

/// The contender this suite is about.
const MPSERVER: &str = "mpserver";
/// Contender name of the raw-limit probe.
const RAW: &str = "raw";
/// Contender columns always shown, in this order (others are appended).
const KNOWN_CONTENDERS: [&str; 3] = [MPSERVER, "mpservice-0.12.9", "mpservice-0.16.8"];

/// Raw-limit counterparts: `(scenario, metric) -> (raw scenario, raw metric)`.
const RAW_COUNTERPARTS: [(&str, &str, &str, &str); 6] = [
    ("S1_seq_call", "p50_us", "R1_roundtrip", "p50_us"),
    ("S1_seq_call", "p99_us", "R1_roundtrip", "p99_us"),
    ("S1_seq_call", "calls_per_s", "R1_roundtrip", "calls_per_s"),
    ("S2_stream_1proc", "items_per_s", "R2_stream", "items_per_s"),
    ("S6_cpu_scaling", "speedup", "R4_cpu_scaling", "speedup"),
    ("S8_payload_1mb", "mb_per_s", "R3_echo_1mb", "mb_per_s"),
];

/// Whether a larger or a smaller value of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Direction {
    /// Throughput-like: more is better.
    HigherIsBetter,
    /// Latency, start-up time, memory: less is better.
    LowerIsBetter,
    /// Descriptive only (e.g. mean batch size, calibrated loop count).
    Neutral,
}

impl Direction {
    /// Classifies a metric by its unit (and name, for `speedup`).
    fn of(metric: &str, unit: &str) -> Self {
        match unit {
            "1/s" | "MB/s" => Direction::HigherIsBetter,
            "us" | "ms" | "s" | "MiB" | "KiB" => Direction::LowerIsBetter,
            _ if metric == "speedup" => Direction::HigherIsBetter,
            _ => Direction::Neutral,
        }
    }

    /// How much better `a` is than `b`: > 1 means `a` is better.
    fn advantage(self, a: f64, b: f64) -> Option<f64> {
        let r = match self {
            Direction::HigherIsBetter => a / b,
            Direction::LowerIsBetter => b / a,
            Direction::Neutral => return None,
        };
        r.is_finite().then_some(r)
    }

    /// Whether `a` is better than `b`.
    fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::LowerIsBetter => a < b,
            _ => a > b,
        }
    }
}

/// Summary of one contender's figure as shown in a cell.
#[derive(Debug, Clone, Serialize)]
struct Cell {
    /// Median over runs.
    median: f64,
    /// Smallest run.
    min: f64,
    /// Largest run.
    max: f64,
    /// Measured while other processes loaded the machine beyond the
    /// protocol's limit (after its retries).
    noisy: bool,
}

impl From<&Figure> for Cell {
    fn from(f: &Figure) -> Self {
        Cell {
            median: f.median,
            min: f.min,
            max: f.max,
            noisy: f.noisy,
        }
    }
}

/// One row of the comparison: a scenario / placement / metric.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// Scenario id, e.g. `S1_seq_call`.
    scenario: String,
    /// `pinned1`, `unpinned` or `split`.
    placement: String,
    /// Metric name.
    metric: String,
    /// Unit of the metric.
    unit: String,
    /// Which way is better.
    direction: Direction,
    /// Each contender's value (`None` when missing), keyed by contender.
    values: Vec<(String, Option<Cell>)>,
    /// Name of the better mpservice contender, if any has this figure.
    best_mpservice: Option<String>,
    /// mpserver compared with the better mpservice; > 1 means mpserver is better.
    mpserver_vs_best_mpservice: Option<f64>,
    /// Raw-limit counterpart as `(scenario/metric, value)`, if one applies.
    raw_counterpart: Option<(String, Cell)>,
    /// mpserver median ÷ raw median.
    mpserver_over_raw: Option<f64>,
    /// Better mpservice median ÷ raw median.
    best_mpservice_over_raw: Option<f64>,
}

/// Output paths and inputs from the command line.
struct Args {
    /// Combined JSON output.
    json: PathBuf,
    /// Markdown table output.
    md: PathBuf,
    /// PNG chart output.
    png: PathBuf,
    /// JSON-lines inputs.
    inputs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("report: {e}");
            eprintln!("usage: report [--json PATH] [--md PATH] [--png PATH] FILE...");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line; output paths default to `docs/bench/` under the
/// repository root.
fn parse_args<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, String> {
    let root = repo_root();
    let mut args = Args {
        json: root.join("docs/bench/results.json"),
        md: root.join("docs/bench/table.md"),
        png: root.join("docs/bench/ratios.png"),
        inputs: Vec::new(),
    };
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .map(PathBuf::from)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--json" => args.json = value()?,
            "--md" => args.md = value()?,
            "--png" => args.png = value()?,
            f if f.starts_with("--") => return Err(format!("unknown flag {f:?}")),
            _ => args.inputs.push(PathBuf::from(a)),
        }
    }
    if args.inputs.is_empty() {
        return Err("no input files".into());
    }
    Ok(args)
}

/// The repository root: the nearest ancestor of the current directory that
/// holds `benches/Cargo.toml`, else the parent of this crate's directory.
fn repo_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join("benches/Cargo.toml").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Reads the inputs, builds the rows and writes all three outputs.
fn run(args: &Args) -> Result<(), String> {
    let figures = read_figures(&args.inputs)?;
    if figures.is_empty() {
        return Err("the input files hold no figures".into());
    }
    let contenders = contender_columns(&figures);
    let rows = build_rows(&figures, &contenders);
    let markdown = render_markdown(&rows, &contenders, &figures);
    print!("{markdown}");

    for path in [&args.json, &args.md, &args.png] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
    }
    fs::write(&args.md, &markdown).map_err(|e| format!("writing {}: {e}", args.md.display()))?;
    let combined = serde_json::json!({ "figures": figures, "rows": rows });
    let text = serde_json::to_string_pretty(&combined).expect("JSON values serialise");
    fs::write(&args.json, text + "\n")
        .map_err(|e| format!("writing {}: {e}", args.json.display()))?;
    draw_chart(&rows, &contenders, &args.png)?;
    eprintln!(
        "report: {} figures -> {}, {}, {}",
        figures.len(),
        args.md.display(),
        args.json.display(),
        args.png.display()
    );
    Ok(())
}

/// Reads every JSON-lines file. Lines for the same contender / scenario /
/// placement / metric (one per invocation when `run.sh` alternates the order
/// of contenders between runs) are merged: their runs pooled.
fn read_figures(paths: &[PathBuf]) -> Result<Vec<Figure>, String> {
    let mut figures: Vec<Figure> = Vec::new();
    let mut index: HashMap<(String, String, String, String), usize> = HashMap::new();
    for path in paths {
        let text =
            fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.starts_with('{') {
                continue;
            }
            let fig: Figure = match serde_json::from_str(line) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("report: {}:{}: skipped ({e})", path.display(), n + 1);
                    continue;
                }
            };
            let key = (
                fig.contender.clone(),
                fig.scenario.clone(),
                fig.placement.clone(),
                fig.metric.clone(),
            );
            match index.get(&key) {
                Some(&i) => figures[i].merge(&fig),
                None => {
                    index.insert(key, figures.len());
                    figures.push(fig);
                }
            }
        }
    }
    Ok(figures)
}

/// Contender columns: the known ones, then any other non-raw contender seen.
fn contender_columns(figures: &[Figure]) -> Vec<String> {
    let extra: BTreeSet<&str> = figures
        .iter()
        .map(|f| f.contender.as_str())
        .filter(|c| *c != RAW && !KNOWN_CONTENDERS.contains(c))
        .collect();
    KNOWN_CONTENDERS
        .iter()
        .copied()
        .chain(extra)
        .map(str::to_owned)
        .collect()
}

/// Numeric part of a scenario id (`S10_memory` -> 10), for natural ordering.
fn scenario_number(id: &str) -> u32 {
    id.chars()
        .skip(1)
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(u32::MAX)
}

/// Order of placements within a scenario: pinned1, unpinned, split, others.
fn placement_rank(placement: &str) -> u8 {
    match placement {
        "pinned1" => 0,
        "unpinned" => 1,
        "split" => 2,
        _ => 3,
    }
}

/// Builds one row per non-raw scenario / placement / metric, in scenario order.
fn build_rows(figures: &[Figure], contenders: &[String]) -> Vec<Row> {
    let lookup = |contender: &str, scenario: &str, placement: &str, metric: &str| {
        figures.iter().find(|f| {
            f.contender == contender
                && f.scenario == scenario
                && f.placement == placement
                && f.metric == metric
        })
    };

    let mut keys: Vec<(&str, &str, &str, &str)> = Vec::new();
    for f in figures.iter().filter(|f| f.contender != RAW) {
        let key = (
            f.scenario.as_str(),
            f.placement.as_str(),
            f.metric.as_str(),
            f.unit.as_str(),
        );
        if !keys
            .iter()
            .any(|k| (k.0, k.1, k.2) == (key.0, key.1, key.2))
        {
            keys.push(key);
        }
    }
    // Stable: metrics keep their first-seen order within a scenario/placement.
    keys.sort_by_key(|k| (scenario_number(k.0), k.0, placement_rank(k.1)));

    keys.into_iter()
        .map(|(scenario, placement, metric, unit)| {
            let direction = Direction::of(metric, unit);
            let values: Vec<(String, Option<Cell>)> = contenders
                .iter()
                .map(|c| {
                    (
                        c.clone(),
                        lookup(c, scenario, placement, metric).map(Cell::from),
                    )
                })
                .collect();
            let best = values
                .iter()
                .filter(|(c, _)| c.starts_with("mpservice"))
                .filter_map(|(c, v)| v.as_ref().map(|v| (c, v.median)))
                .reduce(|a, b| if direction.better(b.1, a.1) { b } else { a });
            let ours = values
                .iter()
                .find(|(c, _)| c == MPSERVER)
                .and_then(|(_, v)| v.as_ref().map(|v| v.median));
            let raw = RAW_COUNTERPARTS
                .iter()
                .find(|(s, m, _, _)| *s == scenario && *m == metric)
                .and_then(|(_, _, rs, rm)| {
                    lookup(RAW, rs, placement, rm).map(|f| (format!("{rs} {rm}"), Cell::from(f)))
                });
            let over_raw = |v: Option<f64>| {
                v.zip(raw.as_ref())
                    .map(|(v, (_, r))| v / r.median)
                    .filter(|r| r.is_finite())
            };
            Row {
                scenario: scenario.to_owned(),
                placement: placement.to_owned(),
                metric: metric.to_owned(),
                unit: unit.to_owned(),
                direction,
                mpserver_vs_best_mpservice: ours
                    .zip(best)
                    .and_then(|(o, (_, b))| direction.advantage(o, b)),
                mpserver_over_raw: over_raw(ours),
                best_mpservice_over_raw: over_raw(best.map(|b| b.1)),
                best_mpservice: best.map(|(c, _)| c.clone()),
                raw_counterpart: raw,
                values,
            }
        })
        .collect()
}

/// Formats a measured value with a precision suited to its magnitude.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100_000.0 {
        group_thousands(v.round() as i64)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    }
}

/// `1234567` -> `"1,234,567"`.
fn group_thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// A cell as `median [min–max]`, or `n/a`.
fn fmt_cell(c: Option<&Cell>) -> String {
    match c {
        Some(c) => format!(
            "{} [{}–{}]{}",
            fmt_value(c.median),
            fmt_value(c.min),
            fmt_value(c.max),
            if c.noisy { " ⚠" } else { "" }
        ),
        None => "n/a".to_owned(),
    }
}

/// A ratio with two significant decimals (more for small values), or `n/a`.
fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 0.1 => format!("{r:.2}"),
        Some(r) => format!("{r:.3}"),
        None => "n/a".to_owned(),
    }
}

/// Renders the comparison table, the raw-limit table and the notes.
fn render_markdown(rows: &[Row], contenders: &[String], figures: &[Figure]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Benchmark comparison\n");
    let _ = writeln!(
        md,
        "Each value: median [min–max] over runs. \"vs best mpservice\": mpserver compared with the \
         better mpservice version, oriented so that **> 1 means mpserver is better** (higher/lower \
         is better per metric, see the arrow). \"÷ raw\": median ÷ the raw two-process limit of the \
         same placement (throughput: fraction of the limit reached; latency: multiple of the raw \
         latency).\n"
    );
    let mut header = String::from("| Scenario | Placement | Metric |");
    let mut rule = String::from("|---|---|---|");
    for c in contenders {
        let _ = write!(header, " {c} |");
        rule.push_str("---:|");
    }
    header.push_str(
        " mpserver vs best mpservice (>1 = mpserver better) | raw limit | mpserver ÷ raw | best mpservice ÷ raw |",
    );
    rule.push_str("---:|---:|---:|---:|");
    let _ = writeln!(md, "{header}\n{rule}");
    for r in rows {
        let arrow = match r.direction {
            Direction::HigherIsBetter => " ↑",
            Direction::LowerIsBetter => " ↓",
            Direction::Neutral => "",
        };
        let mut line = format!(
            "| {} | {} | {} ({}){arrow} |",
            r.scenario, r.placement, r.metric, r.unit
        );
        for (_, v) in &r.values {
            let _ = write!(line, " {} |", fmt_cell(v.as_ref()));
        }
        let raw = r
            .raw_counterpart
            .as_ref()
            .map(|(name, c)| format!("{} ({name})", fmt_value(c.median)))
            .unwrap_or_else(|| "—".to_owned());
        let dash_if_no_raw = |v: Option<f64>| {
            if r.raw_counterpart.is_some() {
                fmt_ratio(v)
            } else {
                "—".to_owned()
            }
        };
        let vs = if r.direction == Direction::Neutral {
            "—".to_owned()
        } else {
            fmt_ratio(r.mpserver_vs_best_mpservice)
        };
        let _ = writeln!(
            line,
            " {vs} | {raw} | {} | {} |",
            dash_if_no_raw(r.mpserver_over_raw),
            dash_if_no_raw(r.best_mpservice_over_raw)
        );
        md.push_str(&line);
    }

    let mut raw: Vec<&Figure> = figures.iter().filter(|f| f.contender == RAW).collect();
    raw.sort_by_key(|f| (scenario_number(&f.scenario), placement_rank(&f.placement)));
    let _ = writeln!(md, "\n## Raw limit (two processes, Unix socket pair)\n");
    if raw.is_empty() {
        let _ = writeln!(md, "n/a (no raw-limit figures were given)");
    } else {
        let _ = writeln!(
            md,
            "| Scenario | Placement | Metric | Value |\n|---|---|---|---:|"
        );
        for f in raw {
            let _ = writeln!(
                md,
                "| {} | {} | {} ({}) | {} |",
                f.scenario,
                f.placement,
                f.metric,
                f.unit,
                fmt_cell(Some(&Cell::from(f)))
            );
        }
    }
    render_conditions(&mut md, figures);
    md
}

/// The measurement conditions: each contender's non-default settings, and
/// the foreign load and attempts of each contender / scenario / placement.
fn render_conditions(md: &mut String, figures: &[Figure]) {
    let mut settings: BTreeSet<(String, String, String)> = BTreeSet::new();
    // (contender, scenario, placement, foreign load, attempts, noisy)
    type Conditions = (String, String, String, Option<f64>, Option<u32>, bool);
    let mut load: Vec<Conditions> = Vec::new();
    for f in figures {
        if let Some(s) = &f.setting {
            settings.insert((f.contender.clone(), f.scenario.clone(), s.clone()));
        }
        match load
            .iter_mut()
            .find(|l| (&l.0, &l.1, &l.2) == (&f.contender, &f.scenario, &f.placement))
        {
            Some(l) => {
                l.3 = match (l.3, f.foreign_load) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                l.4 = l.4.max(f.attempts);
                l.5 |= f.noisy;
            }
            None => load.push((
                f.contender.clone(),
                f.scenario.clone(),
                f.placement.clone(),
                f.foreign_load,
                f.attempts,
                f.noisy,
            )),
        }
    }
    let _ = writeln!(md, "\n## Settings\n");
    if settings.is_empty() {
        let _ = writeln!(md, "Every contender at its default settings.");
    } else {
        let _ = writeln!(
            md,
            "Contenders at a non-default setting (their best documented one for the scenario); \
             all others at their defaults.\n\n| Contender | Scenario | Setting |\n|---|---|---|"
        );
        for (c, sc, s) in &settings {
            let _ = writeln!(md, "| {c} | {sc} | `{s}` |");
        }
    }
    if load.iter().all(|l| l.3.is_none()) {
        return;
    }
    load.sort_by(|a, b| {
        (scenario_number(&a.1), &a.1, &a.2, &a.0).cmp(&(scenario_number(&b.1), &b.1, &b.2, &b.0))
    });
    let _ = writeln!(
        md,
        "\n## Machine load during the measurements\n\n\
         Foreign load: CPU used by processes other than the contender's own (cores, mean over \
         the accepted attempt, the largest over runs). ⚠ = still above the limit after the \
         retries, or the machine was never quiet before the scenario: read such figures as \
         indicative.\n\n| Contender | Scenario | Placement | Foreign load | Attempts | Noisy |\n\
         |---|---|---|---:|---:|---|"
    );
    for (c, sc, p, l, a, noisy) in load {
        let _ = writeln!(
            md,
            "| {c} | {sc} | {p} | {} | {} | {} |",
            l.map_or("n/a".to_owned(), |l| format!("{l:.2}")),
            a.map_or("n/a".to_owned(), |a| a.to_string()),
            if noisy { "⚠" } else { "" }
        );
    }
}

/// One bar group of the chart: a row label and each contender's advantage
/// over the better mpservice.
struct ChartGroup {
    /// Label drawn on the y axis.
    label: String,
    /// `(contender index, advantage)`; advantage > 1 means better than best mpservice.
    bars: Vec<(usize, f64)>,
}

/// Colours of the contender columns, in order.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0xd6, 0x4e, 0x12),
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x81, 0x72, 0xb2),
    RGBColor(0x93, 0x78, 0x60),
    RGBColor(0xda, 0x8b, 0xc3),
];

/// Registers the embedded DejaVu Sans as the chart font (no system fonts needed).
fn register_fonts() -> Result<(), String> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded DejaVu Sans font was rejected".to_owned())?;
    plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold())
        .map_err(|_| "the embedded DejaVu Sans Bold font was rejected".to_owned())
}

/// Short label of a row for the chart's y axis, e.g. `S1 p50_us ↓ [pinned1]`.
fn chart_label(r: &Row) -> String {
    let arrow = if r.direction == Direction::HigherIsBetter {
        "↑"
    } else {
        "↓"
    };
    format!(
        "{} {} {arrow} [{}]",
        r.scenario.split('_').next().unwrap_or(&r.scenario),
        r.metric,
        r.placement
    )
}

/// Bar groups comparing every contender with a reference value per row
/// (`reference` returns `None` to leave a row out); bar = advantage over it.
fn chart_groups(rows: &[Row], reference: impl Fn(&Row) -> Option<f64>) -> Vec<ChartGroup> {
    rows.iter()
        .filter(|r| r.direction != Direction::Neutral)
        .filter_map(|r| {
            let reference = reference(r)?;
            let bars = r
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, (_, v))| {
                    let adv = r.direction.advantage(v.as_ref()?.median, reference)?;
                    (adv > 0.0).then_some((i, adv))
                })
                .collect();
            Some(ChartGroup {
                label: chart_label(r),
                bars,
            })
        })
        .collect()
}

/// Draws the PNG: top panel, every contender relative to the better
/// mpservice; bottom panel, every contender relative to the raw limit
/// (efficiency: 1 = the raw limit). Both on log scales.
fn draw_chart(rows: &[Row], contenders: &[String], path: &Path) -> Result<(), String> {
    register_fonts()?;
    let vs_best = chart_groups(rows, |r| {
        let best = r.best_mpservice.as_ref()?;
        Some(r.values.iter().find(|(c, _)| c == best)?.1.as_ref()?.median)
    });
    let vs_raw = chart_groups(rows, |r| r.raw_counterpart.as_ref().map(|(_, c)| c.median));

    let group_h = 16 * contenders.len().max(1) as u32 + 10;
    let panel_h = |groups: &[ChartGroup]| (140 + group_h * groups.len() as u32).max(220);
    let (h1, h2) = (panel_h(&vs_best), panel_h(&vs_raw));
    let root = BitMapBackend::new(path, (1400, h1 + h2)).into_drawing_area();
    let draw_err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(draw_err)?;
    let (top, bottom) = root.split_vertically(h1);
    draw_panel(
        &top,
        "Performance relative to the better mpservice (> 1 = better; log scale)",
        "relative performance (higher/lower-is-better already accounted for)",
        &vs_best,
        contenders,
    )
    .map_err(draw_err)?;
    draw_panel(
        &bottom,
        "Fraction of the raw two-process limit (1 = raw limit; latency inverted; log scale)",
        "raw-limit efficiency (throughput ÷ raw, or raw latency ÷ latency)",
        &vs_raw,
        contenders,
    )
    .map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// Draws one horizontal bar chart panel of `groups` onto `area`.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    groups: &[ChartGroup],
    contenders: &[String],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    if groups.is_empty() {
        area.draw(&Text::new(
            format!("{title}: no comparable figures."),
            (40, 40),
            ("sans-serif", 22).into_font(),
        ))?;
        return Ok(());
    }

    let (lo, hi) = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.1))
        .fold((1.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = 10f64.powf((lo.log10() - 0.05).floor());
    let hi = 10f64.powf((hi.log10() + 0.05).ceil());
    let x_keys: Vec<f64> = {
        let (a, b) = (lo.log10().round() as i32, hi.log10().round() as i32);
        let step: &[f64] = if b - a > 4 { &[1.0] } else { &[1.0, 2.0, 5.0] };
        (a..=b)
            .flat_map(|e| step.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| *v >= lo * 0.999 && *v <= hi * 1.001)
            .collect()
    };

    let n = groups.len();
    let n_cont = contenders.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24).into_font())
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(330)
        .build_cartesian_2d((lo..hi).log_scale().with_key_points(x_keys), 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(x_desc)
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}×")
            } else {
                format!("{v}×")
            }
        })
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    // Group labels, right-aligned against the plot's left edge (the mesh
    // cannot put labels at arbitrary positions of a continuous axis).
    let label_style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    // `backend_coord` is in backend pixels; `area.draw` wants area-relative ones.
    let (bx, by) = area.get_base_pixel();
    for (gi, g) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(lo, (n - 1 - gi) as f64 + 0.5));
        area.draw(&Text::new(
            g.label.clone(),
            (px - bx - 8, py - by),
            label_style.clone(),
        ))?;
    }

    let bar_h = 0.8 / n_cont as f64;
    for (ci, name) in contenders.iter().enumerate() {
        let color = PALETTE[ci % PALETTE.len()];
        let rects: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| {
                let top = (n - 1 - gi) as f64 + 0.9;
                g.bars.iter().filter(|(i, _)| *i == ci).map(move |&(_, v)| {
                    let y0 = top - bar_h * (ci as f64 + 1.0);
                    Rectangle::new([(lo, y0), (v, y0 + bar_h * 0.9)], color.filled())
                })
            })
            .collect();
        chart
            .draw_series(rects)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled()));
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 0.0), (1.0, n as f64)],
        BLACK.stroke_width(2),
    )))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpserver_benches::Placement;

    fn fig(contender: &str, scenario: &str, metric: &str, unit: &str, v: f64) -> Figure {
        Figure::new(
            contender,
            scenario,
            Placement::Unpinned,
            metric,
            unit,
            vec![v],
        )
    }

    #[test]
    fn rows_of_a_scenario_go_pinned1_unpinned_split() {
        let at = |p: Placement, v: f64| {
            let mut f = fig("mpserver", "S1_seq_call", "p50_us", "us", v);
            f.placement = p.to_string();
            f
        };
        let figures = vec![
            at(Placement::Split, 3.0),
            at(Placement::Unpinned, 2.0),
            at(Placement::Pinned1, 1.0),
        ];
        let rows = build_rows(&figures, &contender_columns(&figures));
        let order: Vec<&str> = rows.iter().map(|r| r.placement.as_str()).collect();
        assert_eq!(order, ["pinned1", "unpinned", "split"]);
    }

    #[test]
    fn ratios_are_oriented_and_missing_contenders_are_na() {
        let figures = vec![
            fig("mpservice-0.12.9", "S1_seq_call", "p50_us", "us", 200.0),
            fig("mpservice-0.16.8", "S1_seq_call", "p50_us", "us", 100.0),
            fig("mpserver", "S1_seq_call", "p50_us", "us", 50.0),
            fig("raw", "R1_roundtrip", "p50_us", "us", 10.0),
            fig(
                "mpservice-0.12.9",
                "S2_stream_1proc",
                "items_per_s",
                "1/s",
                1000.0,
            ),
        ];
        let cols = contender_columns(&figures);
        let rows = build_rows(&figures, &cols);
        assert_eq!(rows.len(), 2);
        let s1 = &rows[0];
        assert_eq!(s1.best_mpservice.as_deref(), Some("mpservice-0.16.8"));
        assert_eq!(s1.mpserver_vs_best_mpservice, Some(2.0));
        assert_eq!(s1.mpserver_over_raw, Some(5.0));
        let s2 = &rows[1];
        assert_eq!(s2.mpserver_vs_best_mpservice, None);
        let md = render_markdown(&rows, &cols, &figures);
        assert!(md.contains("n/a"));
        assert!(md.contains("R1_roundtrip p50_us"));
    }

    #[test]
    fn runs_of_separate_invocations_are_pooled_and_conditions_shown() {
        let dir = std::env::temp_dir().join(format!("report-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mpservice.jsonl");
        let mut a = fig(
            "mpservice-0.12.9",
            "S2_stream_1proc",
            "items_per_s",
            "1/s",
            10.0,
        );
        a.setting = Some("capacity=1024".into());
        a.foreign_load = Some(0.02);
        a.attempts = Some(1);
        let mut b = a.clone();
        b.runs = vec![30.0];
        b.foreign_load = Some(0.5);
        b.attempts = Some(3);
        b.noisy = true;
        let mut c = a.clone();
        c.runs = vec![20.0];
        let text = [a, b, c].map(|f| f.to_json_line()).join("\n");
        fs::write(&path, text).unwrap();
        let figures = read_figures(std::slice::from_ref(&path)).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(figures.len(), 1);
        assert_eq!(figures[0].runs, [10.0, 30.0, 20.0]);
        assert_eq!(figures[0].median, 20.0);
        let cols = contender_columns(&figures);
        let rows = build_rows(&figures, &cols);
        let md = render_markdown(&rows, &cols, &figures);
        assert!(md.contains("20.0 [10.0–30.0] ⚠"), "{md}");
        assert!(
            md.contains("| mpservice-0.12.9 | S2_stream_1proc | `capacity=1024` |"),
            "{md}"
        );
        assert!(
            md.contains("| mpservice-0.12.9 | S2_stream_1proc | unpinned | 0.50 | 3 | ⚠ |"),
            "{md}"
        );
    }

    #[test]
    fn number_formatting() {
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(fmt_value(123_456.7), "123,457");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(scenario_number("S10_memory"), 10);
    }
}
