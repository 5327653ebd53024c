#!/usr/bin/env bash
# Run the whole benchmark comparison: raw limit, Python mpservice 0.12.9 and
# 0.16.8, and mpserver (if its scenarios binary has been built), each under
# both CPU placements, then build the report.
#
# Usage: benches/run.sh [--quick] [--runs N] [--no-build]
#
#   --quick     smaller counts everywhere (smoke test)
#   --runs N    runs per figure (default 3)
#   --no-build  use the binaries already in the target directory
#
# Outputs: benches/results/*.jsonl (one file per contender and placement),
# benches/results/*.log (progress), and docs/bench/{results.json,table.md,ratios.png}
# (another folder with BENCH_REPORT_DIR=DIR).
# The target directory is $CARGO_TARGET_DIR if set, else <repo>/target.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
benches="$root/benches"
results="$benches/results"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release"
report_dir="${BENCH_REPORT_DIR:-$root/docs/bench}"

pass=()
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) pass+=(--quick) ;;
        --runs) pass+=(--runs "$2"); shift ;;
        --runs=*) pass+=("$1") ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "== $*" >&2; }

cd "$root"
if [ "$build" = 1 ]; then
    say "building mpserver-benches (release)"
    cargo build --release -p mpserver-benches
fi
for b in raw_limit report; do
    [ -x "$bin/$b" ] || { echo "run.sh: $bin/$b is missing (build first)" >&2; exit 1; }
done

# Other work on the machine (builds, tests) skews every figure: warn about it.
load="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "run.sh: WARNING: 1-minute load average is $load; figures will be noisy" \
        "unless the machine is otherwise idle" >&2
fi

say "setting up Python venvs"
bash "$benches/python/setup_venvs.sh"

mkdir -p "$results"
rm -f "$results"/*.jsonl "$results"/*.log
failed=()

# run NAME CMD...: stdout -> results/NAME.jsonl, stderr -> results/NAME.log (and shown).
run() {
    local name="$1"; shift
    say "$name"
    if ! "$@" >"$results/$name.jsonl" 2> >(tee "$results/$name.log" >&2); then
        echo "run.sh: $name failed (see $results/$name.log)" >&2
        failed+=("$name")
    fi
}

for placement in pinned1 unpinned; do
    run "raw-$placement" "$bin/raw_limit" --placement "$placement" "${pass[@]}"
done

for version in 0.12.9 0.16.8; do
    venv="$benches/.venv-$version"
    if [ ! -f "$venv/READY" ]; then
        echo "run.sh: skipping mpservice-$version ($(cat "$venv/SKIP" 2>/dev/null || echo 'venv not ready'))" >&2
        continue
    fi
    for placement in pinned1 unpinned; do
        run "mpservice-$version-$placement" \
            "$venv/bin/python" "$benches/python/mpservice_bench.py" --placement "$placement" "${pass[@]}"
    done
done

if [ -x "$bin/mpserver_scenarios" ]; then
    for placement in pinned1 unpinned; do
        run "mpserver-$placement" "$bin/mpserver_scenarios" --placement "$placement" "${pass[@]}"
    done
else
    echo "run.sh: $bin/mpserver_scenarios not built yet; mpserver shows as n/a" >&2
fi

say "report"
"$bin/report" \
    --json "$report_dir/results.json" \
    --md "$report_dir/table.md" \
    --png "$report_dir/ratios.png" \
    "$results"/*.jsonl

if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: failed: ${failed[*]}" >&2
    exit 1
fi
