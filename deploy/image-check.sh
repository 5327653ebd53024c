#!/usr/bin/env bash
# Builds the container image of the repository's `Dockerfile` without a
# daemon and checks that it serves the seed flow as an unprivileged user.
#
#   deploy/image-check.sh [PATH/TO/seed_http]    (default: target/release/seed_http)
#
# Needs buildah (Debian package `buildah`); runs as root with its own
# throw-away storage (vfs driver, chroot isolation: no daemon, no overlay).
#
# The Dockerfile's base images live in container registries this machine
# cannot reach, so the check builds its `prebuilt` target: the same runtime
# stage (user, environment, entry point) around a `seed_http` built by cargo
# on this machine, on a runtime base made here from this machine's own
# Debian 12 libraries (the loader, glibc, libm, libgcc: what
# distroless/cc-debian12 provides). The `build` stage is not run here.
#
# Checks: the image's user is 65532 and its entry point is seed_http; in a
# container from it, run with the Kubernetes Deployment's environment
# (every MPSERVER_HTTP_* variable it sets is one seed_http reads),
# `/healthz` and `/readyz` answer 200, `POST /call` answers the seed's
# "Hello, wdwdwdwdwd!", `/metrics` exports every metric the manifests
# (deploy/k8s) refer to and the Deployment's capacity; the server runs as uid
# 65532 with its worker processes; on SIGTERM `/readyz` turns 503 at once,
# the process exits 0 after the Deployment's drain delay and within its
# terminationGracePeriodSeconds, and leaves no worker process behind.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$root/target/release/seed_http}"
[ -x "$bin" ] || { echo "image-check: $bin is missing (cargo build --release -p mpserver-http-seed --bin seed_http)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "image-check: buildah is not installed" >&2; exit 1; }

work="$(mktemp -d /tmp/mpserver-image-check.XXXXXX)"
B=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
run_pid=""
cleanup() {
    # The container runs in a process group of its own (setsid below): end
    # all of it (buildah, its chroot runner, the server, its workers).
    if [ -n "$run_pid" ]; then
        kill -KILL -- "-$run_pid" 2>/dev/null || true
    fi
    "${B[@]}" rm --all >/dev/null 2>&1 || true
    # vfs layers hold read-only copies: make them removable, then remove.
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
say() { echo "image-check: $*" >&2; }
fail() { say "FAILED: $*"; [ -f "$work/err.txt" ] && tail -20 "$work/err.txt" >&2; exit 1; }

# 1. The runtime base: the loader and libraries seed_http links against,
#    /etc/passwd and /etc/group with the `nonroot` user (65532), /tmp.
base="$work/base"
mkdir -p "$base/rootfs/etc" "$base/rootfs/tmp"
chmod 1777 "$base/rootfs/tmp"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$base/rootfs$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$base/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$base/rootfs/etc/group"
printf 'FROM scratch\nCOPY rootfs/ /\nUSER 65532:65532\n' >"$base/Containerfile"
"${B[@]}" bud --quiet --isolation chroot -t localhost/mpserver-runtime-base:check \
    -f "$base/Containerfile" "$base" >/dev/null

# 2. The image: the Dockerfile's `prebuilt` target, its context a folder
#    holding only the binary (without debug info, as the `build` stage makes it).
ctx="$work/ctx"
mkdir -p "$ctx"
objcopy --strip-debug "$bin" "$ctx/seed_http"
"${B[@]}" bud --quiet --isolation chroot --target prebuilt \
    --build-arg RUNTIME_IMAGE=localhost/mpserver-runtime-base:check \
    -t localhost/mpserver-seed-http:check -f "$root/Dockerfile" "$ctx" >/dev/null
user="$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' localhost/mpserver-seed-http:check)"
entry="$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' localhost/mpserver-seed-http:check)"
[ "$user" = "65532:65532" ] || fail "image user is '$user', not 65532:65532"
[ "$entry" = "[/usr/local/bin/seed_http]" ] || fail "image entry point is $entry"
size="$("${B[@]}" images --format '{{.Size}}' localhost/mpserver-seed-http:check)"
say "image built: user $user, entry point $entry, size $size"

# 3. Run it: a container with the image's user and the Deployment's
#    environment (deploy/k8s/base/deployment.yaml), on the host's loopback
#    (the flag moves the address to a free port; flags win over variables).
mapfile -t envs < <(python3 - "$root/deploy/k8s/base/deployment.yaml" <<'EOF'
import sys
import yaml
with open(sys.argv[1]) as f:
    dep = yaml.safe_load(f)
(c,) = dep["spec"]["template"]["spec"]["containers"]
for e in c["env"]:
    print(f"{e['name']}={e['value']}")
EOF
)
[ "${#envs[@]}" -gt 0 ] || fail "no environment in the Deployment"
help="$("$bin" --help)"
env_args=()
for e in "${envs[@]}"; do
    name="${e%%=*}"
    case "$name" in
        MPSERVER_HTTP_*) grep -q "env: $name=" <<<"$help" || fail "seed_http does not read $name (set in the Deployment)" ;;
    esac
    env_args+=(-e "$e")
done
env_value() { local e; for e in "${envs[@]}"; do if [ "${e%%=*}" = "$1" ]; then echo "${e#*=}"; fi; done; }
capacity="$(env_value MPSERVER_HTTP_CAPACITY)"
drain_ms="$(env_value MPSERVER_HTTP_DRAIN_DELAY_MS)"
grace_ms="$(env_value MPSERVER_HTTP_GRACE_MS)"
ctr="$("${B[@]}" from --quiet localhost/mpserver-seed-http:check)"
setsid "${B[@]}" run --isolation chroot --network host "${env_args[@]}" "$ctr" -- \
    /usr/local/bin/seed_http --addr 127.0.0.1:0 \
    >"$work/out.txt" 2>"$work/err.txt" &
run_pid=$!
addr=""
for _ in $(seq 1 300); do
    addr="$(sed -n 's/^listening on //p' "$work/out.txt" 2>/dev/null)"
    [ -n "$addr" ] && break
    kill -0 "$run_pid" 2>/dev/null || fail "the container exited before listening"
    sleep 0.1
done
[ -n "$addr" ] || fail "no 'listening on' line within 30 s"
base_url="http://$addr"

curl -sf "$base_url/healthz" >/dev/null || fail "/healthz"
ready=""
for _ in $(seq 1 300); do
    if curl -sf "$base_url/readyz" >/dev/null; then ready=1; break; fi
    sleep 0.1
done
[ -n "$ready" ] || fail "/readyz did not answer 200 within 30 s"
answer="$(curl -sf -X POST "$base_url/call" -d '"world"')" || fail "POST /call"
[ "$answer" = '"Hello, wdwdwdwdwd!"' ] || fail "POST /call answered $answer"
metrics="$(curl -sf "$base_url/metrics")" || fail "/metrics"
names="$(grep -rhoE --include='*.yaml' 'mpserver_[a-z_]+' "$root/deploy/k8s" | sort -u)"
[ -n "$names" ] || fail "no metric names found in deploy/k8s"
for name in $names; do
    grep -q "^$name[ {]" <<<"$metrics" || fail "/metrics does not export $name (used in deploy/k8s)"
done
grep -q "^mpserver_server_capacity $capacity\$" <<<"$metrics" \
    || fail "the capacity is not the Deployment's $capacity: $(grep '^mpserver_server_capacity ' <<<"$metrics")"
say "served: /healthz, /readyz, POST /call -> $answer, /metrics has $(echo $names), capacity $capacity"

# The server process: the child of buildah's runner that execs seed_http.
descendants() { local p; for p in $(pgrep -P "$1" || true); do echo "$p"; descendants "$p"; done; }
server=""
for p in $(descendants "$run_pid"); do
    if [ "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" = "/usr/local/bin/seed_http --addr 127.0.0.1:0 " ]; then
        server="$p"
    fi
done
[ -n "$server" ] || fail "cannot find the seed_http process"
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$server/status")"
[ "$uid" = 65532 ] || fail "seed_http runs as uid $uid"
worker_pids="$(pgrep -P "$server" || true)"
workers="$(echo $worker_pids | wc -w)"
[ "$workers" -ge 5 ] || fail "expected the seed's 5 worker processes, found $workers"
say "seed_http (pid $server) runs as uid $uid with $workers worker processes"

# 4. SIGTERM, as the kubelet sends it after the preStop hook: /readyz turns
#    503 at once while the process keeps answering for the Deployment's
#    drain delay, then the flow drains and the process exits 0, within the
#    time the Deployment allows, leaving no worker process.
limit_s="$(python3 -c "import yaml; print(yaml.safe_load(open('$root/deploy/k8s/base/deployment.yaml'))['spec']['template']['spec']['terminationGracePeriodSeconds'])")"
t0="$(date +%s%N)"
kill -TERM "$server"
code=""
for _ in $(seq 1 50); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "$base_url/readyz" || true)"
    [ "$code" = 503 ] && break
    sleep 0.1
done
[ "$code" = 503 ] || fail "/readyz answered $code, not 503, after SIGTERM"
timeout "$limit_s" tail --pid="$server" -f /dev/null \
    || fail "seed_http did not stop within terminationGracePeriodSeconds ($limit_s s) of SIGTERM"
took_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$took_ms" -ge "$drain_ms" ] || fail "stopped after $took_ms ms, before the drain delay ($drain_ms ms): the delay was not applied"
status=0
wait "$run_pid" || status=$?
run_pid=""
[ "$status" = 0 ] || fail "the container exited with status $status after SIGTERM"
left=""
for p in $worker_pids; do
    if kill -0 "$p" 2>/dev/null; then left="$left $p"; fi
done
[ -z "$left" ] || fail "worker processes left behind:$left"
say "SIGTERM: /readyz 503 at once, exit 0 after $took_ms ms (drain delay $drain_ms ms, grace $grace_ms ms, limit $limit_s s)"
say "OK"
