#!/usr/bin/env bash
# Run the benchmark comparison under the suite's protocol: raw limit, Python
# mpservice 0.12.9 and 0.16.8 (each at its best documented setting), and
# mpserver, scenario by scenario, under both CPU placements; then build the
# report.
#
# Usage: benches/run.sh [--quick] [--runs N] [--scenarios S1,S13,...]
#                       [--placements pinned1,unpinned,split] [--defaults] [--no-build]
#                       [--baseline BIN]
#
#   --quick       smaller counts, 1 run, short quiet waits, no reruns (smoke test)
#   --runs N      runs per figure (default 3; each run is a separate invocation
#                 of each contender, their order alternating from run to run)
#   --scenarios   ids to run (default: R, S1-S14; an id no contender defines,
#                 e.g. S11 before it exists, is skipped with a note)
#   --placements  placements to measure (default: pinned1,unpinned,split; split
#                 is measured for S1 and R1 only: see benches/README.md)
#   --defaults    run the mpservice peers at their default settings
#   --no-build    use the binaries already in the target directory
#   --baseline BIN  also run BIN (an mpserver_scenarios built from another
#                 commit) as contender `mpserver-baseline`, alternating with
#                 the others: before/after figures of a change in one sitting
#
# Protocol (see benches/README.md): before each contender's run of a scenario,
# wait until other processes use less than BENCH_MAX_FOREIGN cores (default
# 0.10) for BENCH_QUIET_FOR seconds (3), at most BENCH_QUIET_TIMEOUT seconds
# (60; 5 with --quick); record the foreign load during the run and rerun it
# up to BENCH_RETRIES times (2; 0 with --quick) when it exceeded the limit.
# Waits and reruns together may take at most BENCH_BUDGET seconds (1800; 120
# with --quick); after that nothing waits or reruns. Figures still measured
# under load are marked noisy (⚠ in the table).
#
# Outputs: benches/results/*.jsonl (one file per contender and placement),
# benches/results/run.log (progress), and docs/bench/{results.json,table.md,ratios.png}
# (another folder with BENCH_REPORT_DIR=DIR).
# The target directory is $CARGO_TARGET_DIR if set, else <repo>/target.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
benches="$root/benches"
results="$benches/results"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release"
report_dir="${BENCH_REPORT_DIR:-$root/docs/bench}"

quick=0
runs=3
runs_given=0
build=1
best=1
selection=""
baseline=""
placements="pinned1,unpinned,split"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --runs) runs="$2"; runs_given=1; shift ;;
        --runs=*) runs="${1#--runs=}"; runs_given=1 ;;
        --scenarios) selection="$2"; shift ;;
        --scenarios=*) selection="${1#--scenarios=}" ;;
        --placements) placements="$2"; shift ;;
        --placements=*) placements="${1#--placements=}" ;;
        --defaults) best=0 ;;
        --no-build) build=0 ;;
        --baseline) baseline="$2"; shift ;;
        --baseline=*) baseline="${1#--baseline=}" ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
case "$runs" in
    ''|*[!0-9]*|0) echo "run.sh: --runs needs a positive integer" >&2; exit 2 ;;
esac

if [ "$quick" = 1 ]; then
    [ "$runs_given" = 1 ] || runs=1
    quiet_timeout="${BENCH_QUIET_TIMEOUT:-5}"
    retries="${BENCH_RETRIES:-0}"
    budget="${BENCH_BUDGET:-120}"
else
    quiet_timeout="${BENCH_QUIET_TIMEOUT:-60}"
    retries="${BENCH_RETRIES:-2}"
    budget="${BENCH_BUDGET:-1800}"
fi
max_foreign="${BENCH_MAX_FOREIGN:-0.10}"
quiet_for="${BENCH_QUIET_FOR:-3}"

say() { echo "== $*" >&2; }

cd "$root"
if [ "$build" = 1 ]; then
    say "building mpserver-benches (release)"
    cargo build --release -p mpserver-benches --bins
fi
for b in raw_limit report loadwatch; do
    [ -x "$bin/$b" ] || { echo "run.sh: $bin/$b is missing (build first)" >&2; exit 1; }
done

say "setting up Python venvs"
bash "$benches/python/setup_venvs.sh"

mkdir -p "$results"
rm -f "$results"/*.jsonl "$results"/*.log "$results/budget"
exec 2> >(tee "$results/run.log" >&2)
failed=()

# Contenders and the scenarios each defines.
contenders=()
declare -A cmd defines no_split
if [ -x "$bin/mpserver_scenarios" ]; then
    contenders+=(mpserver)
    cmd[mpserver]="$bin/mpserver_scenarios"
    defines[mpserver]=" $("$bin/mpserver_scenarios" --list | tr '\n' ' ') "
else
    echo "run.sh: $bin/mpserver_scenarios not built; mpserver shows as n/a" >&2
fi
if [ -n "$baseline" ]; then
    [ -x "$baseline" ] || { echo "run.sh: baseline $baseline is not an executable" >&2; exit 2; }
    contenders+=(mpserver-baseline)
    cmd[mpserver-baseline]="$baseline"
    # Older builds have no --list: they define at least S1-S10.
    defines[mpserver-baseline]=" $("$baseline" --list 2>/dev/null | tr '\n' ' ' || true) "
    # A binary from before the split placement refuses it: leave it out there.
    "$baseline" --placement split --list >/dev/null 2>&1 || no_split[mpserver-baseline]=1
    [ "${defines[mpserver-baseline]}" = "  " ] && defines[mpserver-baseline]=" S1 S2 S3 S4 S5 S6 S7 S8 S9 S10 "
fi
for version in 0.12.9 0.16.8; do
    venv="$benches/.venv-$version"
    if [ ! -f "$venv/READY" ]; then
        echo "run.sh: skipping mpservice-$version ($(cat "$venv/SKIP" 2>/dev/null || echo 'venv not ready'))" >&2
        continue
    fi
    c="mpservice-$version"
    contenders+=("$c")
    cmd[$c]="$venv/bin/python $benches/python/mpservice_bench.py"
    [ "$best" = 1 ] && cmd[$c]+=" --best"
    defines[$c]=" $($venv/bin/python "$benches/python/mpservice_bench.py" --list | tr '\n' ' ') "
done

# The scenarios to run. Raw-limit scenarios (R1-R4) are the counterparts of
# S1, S2, S8 and S6; a selection of S ids brings their raw counterparts along.
all_s=(S1 S2 S3 S4 S5 S6 S7 S8 S9 S10 S11 S12 S13 S14)
if [ -z "$selection" ]; then
    wanted=("${all_s[@]}")
    raw_ids="R1,R2,R3,R3b,R4"
else
    IFS=',' read -r -a wanted <<<"${selection^^}"
    raw_ids=""
    for id in "${wanted[@]}"; do
        case "${id%%_*}" in
            R*) raw_ids+="${id%%_*}," ;;
            S1) raw_ids+="R1," ;;
            S2) raw_ids+="R2," ;;
            S6) raw_ids+="R4," ;;
            S8) raw_ids+="R3,R3b," ;;
        esac
    done
    raw_ids="${raw_ids%,}"
fi

common=()
[ "$quick" = 1 ] && common+=(--quick)

# measure NAME PLACEMENT SCENARIO CMD...: one run of one contender under the
# protocol (quiet wait, foreign-load record, bounded reruns).
measure() {
    local name="$1" placement="$2" scenario="$3"; shift 3
    say "$scenario $placement: $name"
    if ! "$bin/loadwatch" run --out "$results/$name-$placement.jsonl" \
        --max-foreign "$max_foreign" --quiet-for "$quiet_for" \
        --quiet-timeout "$quiet_timeout" --retries "$retries" \
        --budget-file "$results/budget" --budget "$budget" \
        -- "$@" --placement "$placement" --runs 1 --scenarios "$scenario" "${common[@]}"; then
        echo "run.sh: $name $scenario $placement failed" >&2
        failed+=("$name:$scenario:$placement")
    fi
}

IFS=',' read -r -a placement_list <<<"$placements"
if [ -n "$raw_ids" ]; then
    for placement in "${placement_list[@]}"; do
        ids="$raw_ids"
        if [ "$placement" = split ]; then
            [[ ",$raw_ids," == *,R1,* ]] || continue
            ids=R1
        fi
        for ((r = 0; r < runs; r++)); do
            measure raw "$placement" "$ids" "$bin/raw_limit"
        done
    done
fi

for id in "${wanted[@]}"; do
    key="${id%%_*}"
    [[ "$key" == R* ]] && continue
    who=()
    for c in "${contenders[@]}"; do
        [[ "${defines[$c]}" == *" $key "* ]] && who+=("$c")
    done
    if [ ${#who[@]} -eq 0 ]; then
        say "$key: not defined by any contender, skipped"
        continue
    fi
    for placement in "${placement_list[@]}"; do
        if [ "$key" = S6 ] && [ "$placement" = pinned1 ]; then
            say "S6 pinned1: skipped (S6 measures scaling over 2 CPUs)"
            continue
        fi
        # split (caller's process on CPU 0, workers on CPU 1) is S1's.
        [ "$placement" = split ] && [ "$key" != S1 ] && continue
        here=()
        for c in "${who[@]}"; do
            if [ "$placement" = split ] && [ -n "${no_split[$c]:-}" ]; then
                say "S1 split: $c does not know the split placement, skipped"
                continue
            fi
            here+=("$c")
        done
        for ((r = 0; r < runs; r++)); do
            # Alternate the order of contenders: rotate it by the run
            # number, so each goes first, second, ... in turn.
            n=${#here[@]}
            order=()
            for ((i = 0; i < n; i++)); do order+=("${here[$(((i + r) % n))]}"); done
            for c in "${order[@]}"; do
                # shellcheck disable=SC2086  # cmd holds a program and its flags
                measure "$c" "$placement" "$key" ${cmd[$c]}
            done
        done
    done
done

# A baseline binary names itself `mpserver`: rename its figures.
for f in "$results"/mpserver-baseline-*.jsonl; do
    [ -f "$f" ] && sed -i 's/"contender":"mpserver"/"contender":"mpserver-baseline"/' "$f"
done

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
