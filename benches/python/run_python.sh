#!/usr/bin/env bash
# The Python package side by side: the suite's Python scenarios (S1-S10 of
# mpservice_bench.py, the same worker code) on mpservice 0.12.9, 0.16.8 and
# mpserver-py, in one sitting, each under both CPU placements; then the table
# docs/bench/python.md (BENCH_REPORT_DIR=DIR for another folder). The
# mpservice versions run with --best (their best documented setting); the
# scenarios S2-S5 and S7 also report CPU time per item (cpu_us_per_item).
#
# Usage: benches/python/run_python.sh [--quick] [--runs N]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
benches="$(dirname "$here")"
root="$(dirname "$benches")"
results="$benches/results/python"
report_dir="${BENCH_REPORT_DIR:-$root/docs/bench}"
pass=("$@")

say() { echo "== $*" >&2; }

bash "$here/setup_venvs.sh"

venv="$benches/.venv-mpserver-py"
say "installing mpserver-py into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$root/mpserver-py" \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check "$root/mpserver-py"

mkdir -p "$results"
rm -f "$results"/*.jsonl "$results"/*.log
failed=()
run() {
    local name="$1"; shift
    say "$name"
    if ! "$@" >"$results/$name.jsonl" 2> >(tee "$results/$name.log" >&2); then
        echo "run_python.sh: $name failed (see $results/$name.log)" >&2
        failed+=("$name")
    fi
}

for placement in pinned1 unpinned; do
    for version in 0.12.9 0.16.8; do
        v="$benches/.venv-$version"
        if [ -f "$v/READY" ]; then
            # Each mpservice version at its best documented setting
            # (mpservice_bench.py's BEST_SETTINGS: 0.12.9 streams with
            # capacity 1024); each such figure names its setting.
            run "mpservice-$version-$placement" \
                "$v/bin/python" "$here/mpservice_bench.py" --best --placement "$placement" "${pass[@]}"
        fi
    done
    # From another folder, so the installed package is the one imported.
    run "mpserver-py-$placement" \
        env -C "$results" "$venv/bin/python" "$here/mpservice_bench.py" --impl mpserver \
        --placement "$placement" "${pass[@]}"
    # Start-up with worker processes spawned instead of forked (S9 only).
    if [ "$placement" = unpinned ]; then
        run "mpserver-py-spawn-$placement" \
            env -C "$results" "$venv/bin/python" "$here/mpservice_bench.py" --impl mpserver \
            --start-method spawn --placement "$placement" "${pass[@]}" --scenarios S9
    fi
done

mkdir -p "$report_dir"
python3 "$here/py_report.py" "$results"/*.jsonl >"$report_dir/python.md"
say "wrote $report_dir/python.md"
cat "$report_dir/python.md"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run_python.sh: failed: ${failed[*]}" >&2
    exit 1
fi
