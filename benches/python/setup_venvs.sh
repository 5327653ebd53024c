#!/usr/bin/env bash
# Create one virtual environment per Python `mpservice` version used as a
# benchmark contender:
#
#   benches/.venv-0.12.9   with mpservice==0.12.9
#   benches/.venv-0.16.8   with mpservice==0.16.8
#
# Idempotent: an environment whose interpreter already imports the right
# mpservice version is left alone.
#
# If the package index cannot be reached (or an install fails), a clear message
# is printed, a marker file `<venv>/SKIP` is written, and the script still exits
# 0 so that the caller (benches/run.sh) skips that contender. A successful setup
# writes `<venv>/READY` instead.
#
# Usage: benches/python/setup_venvs.sh [VERSION ...]   (default: 0.12.9 0.16.8)
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
benches="$(dirname "$here")"
python="${PYTHON:-python3}"

versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    versions=(0.12.9 0.16.8)
fi

setup_one() {
    local version="$1"
    local venv="$benches/.venv-$version"
    local py="$venv/bin/python"

    if [ -x "$py" ] && "$py" - "$version" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("mpservice") == sys.argv[1] else 1)
EOF
    then
        echo "setup_venvs: $venv already has mpservice==$version" >&2
        rm -f "$venv/SKIP"
        touch "$venv/READY"
        return 0
    fi

    echo "setup_venvs: creating $venv" >&2
    rm -f "$venv/READY" "$venv/SKIP"
    if ! "$python" -m venv "$venv"; then
        echo "setup_venvs: ERROR: '$python -m venv' failed; skipping mpservice==$version" >&2
        mkdir -p "$venv"
        echo "venv creation failed" >"$venv/SKIP"
        return 0
    fi

    # Short timeout and few retries: an unreachable index should fail fast.
    if ! "$py" -m pip install --disable-pip-version-check --quiet \
        --timeout 30 --retries 2 "mpservice==$version"; then
        echo "setup_venvs: ERROR: could not install mpservice==$version" \
            "(package index unreachable or install failed); this contender will be skipped" >&2
        echo "pip install mpservice==$version failed" >"$venv/SKIP"
        return 0
    fi

    if ! "$py" -c "import mpservice.mpserver" 2>/dev/null; then
        echo "setup_venvs: ERROR: mpservice==$version installed but does not import;" \
            "this contender will be skipped" >&2
        echo "import mpservice.mpserver failed" >"$venv/SKIP"
        return 0
    fi

    touch "$venv/READY"
    echo "setup_venvs: $venv ready (mpservice==$version)" >&2
}

for v in "${versions[@]}"; do
    setup_one "$v"
done
exit 0
