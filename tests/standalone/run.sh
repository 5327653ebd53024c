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

# --- Issue 10 item 10: `panic = "abort"` (this crate's profile) -------------
# A process worker's panic reaches its caller with message and location; the
# next call is served by the restarted worker.
out=$(timeout 60 "$bin/abort_panic" process 2> "$bin/abort_panic.err")
echo "$out" | grep -q '^process: .*panic: fragile worker cannot take 2 (at src/bin/abort_panic.rs:[0-9]*:[0-9]*)' \
    || fail "process worker panic under panic=abort: $out"
echo "$out" | grep -qx 'next: 30' || fail "no call served after the panic: $out"
# A panic in a process worker's init fails the start with it.
out=$(timeout 60 "$bin/abort_panic" init 2>> "$bin/abort_panic.err")
echo "$out" | grep -q '^init: .*panic: fragile worker cannot start (at src/bin/abort_panic.rs:' \
    || fail "init panic under panic=abort: $out"
# A thread worker's panic aborts the process, but says what and where first.
# (Braces: the shell's "Aborted" notice goes to /dev/null, not the CI log.)
code=$( { timeout 60 "$bin/abort_panic" thread > /dev/null 2> "$bin/abort_panic.thread.err"; echo $?; } 2> /dev/null )
[[ $code -eq 134 ]] || fail "thread worker panic: exit code $code, expected 134 (SIGABRT)"
grep -q 'fragile worker cannot take 2' "$bin/abort_panic.thread.err" \
    && grep -q 'abort_panic.rs:[0-9]*:[0-9]*' "$bin/abort_panic.thread.err" \
    || fail "thread worker panic left no message: $(head -c 500 "$bin/abort_panic.thread.err")"
echo "standalone: abort_panic OK (panic = \"abort\": process, init and thread panics reported)"
