#!/usr/bin/env bash
# Builds the standalone programs (no `auto-init`, `panic = "abort"`) and
# checks what they print. Run by `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never
cargo build --quiet --bins
bin="$PWD/target/debug"
fail() { echo "standalone: FAILED: $*" >&2; exit 1; }

# --- Issue 10 item 4: forgetting `mpserver::init()` ---------------------------
# With init(): works.
out=$(CALL_INIT=1 timeout 60 "$bin/no_init")
[[ "$out" == "ok 42" ]] || fail "no_init with init() printed: $out"

# Without: the start fails at once naming mpserver::init(), and no process is
# left. Run where a regression cannot harm the machine: a PID namespace (all
# of it is killed when its first process exits), as an unprivileged user with
# a process limit, under a timeout.
cat > "$bin/no_init_check.sh" <<'SH'
set -u
setpriv --reuid=65534 --regid=65534 --clear-groups \
    prlimit --nproc=64 timeout -s KILL 20 "$1/no_init" > "$1/no_init.out" 2> "$1/no_init.err"
echo "exit=$?"
sleep 0.2
echo "left=$(pgrep -c -x no_init || true)"
SH
if unshare -fp --mount-proc true 2>/dev/null; then
    res=$(unshare -fp --mount-proc sh "$bin/no_init_check.sh" "$bin")
else
    echo "standalone: no PID namespace here; relying on the process limit" >&2
    res=$(sh "$bin/no_init_check.sh" "$bin")
fi
out=$(cat "$bin/no_init.out")
echo "$res" | grep -qx "exit=2" || fail "no_init without init(): $res; $out"
echo "$res" | grep -qx "left=0" || fail "no_init without init() left processes: $res"
echo "$out" | grep -q 'mpserver::init()' || fail "error does not name mpserver::init(): $out"
ms=$(echo "$out" | sed -n 's/^start failed after \([0-9]*\) ms.*/\1/p')
[[ -n "$ms" && "$ms" -lt 2000 ]] || fail "start did not fail at once: $out"
echo "standalone: no_init OK (without init(): start failed after $ms ms, no process left)"
