#!/usr/bin/env bash
# Development loop without pip: builds the extension (debug, or release with
# --release) and places it in python/mpserver/, so that
# `PYTHONPATH=mpserver-py/python python ...` uses it. Not for distribution
# (the module links libpython); `pip install ./mpserver-py` is.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
if [ "${1:-}" = "--release" ]; then profile=release; fi
cargo build -p mpserver-py ${1:+"$1"}
cp "target/$profile/lib_mpserver.so" mpserver-py/python/mpserver/_mpserver.abi3.so
