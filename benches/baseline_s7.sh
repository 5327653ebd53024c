#!/usr/bin/env bash
# Build `mpserver_scenarios` of an older commit with *this* tree's S7 (the
# burst protocol: see benches/README.md), so that S7 of that commit and of
# this tree are measured the same way. Nothing else of the old commit
# changes: its library, its other scenarios, its Cargo.lock.
#
# Usage: benches/baseline_s7.sh [COMMIT] [OUTDIR]
#        (defaults: 300b698, /work/bin-before-s7)
#
# Exports COMMIT with `git archive` into OUTDIR/src (no clone, no git
# metadata), replaces its S7 (from `fn s7(` up to the S8 doc comment or
# `fn s8(`) with this tree's S7 block (from `const S7_BURSTS` up to the S8
# doc comment), builds it in release mode in OUTDIR/src/target (offline if
# the crates are cached), copies the binary to OUTDIR/mpserver_scenarios and
# deletes the target directory. Then, e.g.:
#
#   benches/run.sh --scenarios S7 --baseline OUTDIR/mpserver_scenarios
set -euo pipefail

commit="${1:-300b698}"
out="${2:-/work/bin-before-s7}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
here_rs="$root/benches/src/bin/mpserver_scenarios.rs"

rm -rf "$out/src"
mkdir -p "$out/src"
git -C "$root" archive "$commit" | tar -x -C "$out/src"
old_rs="$out/src/benches/src/bin/mpserver_scenarios.rs"

python3 - "$here_rs" "$old_rs" <<'EOF'
import sys
here, old = (open(p).read() for p in sys.argv[1:3])
a = here.index("const S7_BURSTS")
a = here.rindex("\n\n", 0, a) + 2  # with its doc comment
b = here.index("/// S8: ", a)
block = here[a:b]
s = old.index("fn s7(args: &CommonArgs, out: &Out) {")
s = old.rindex("\n\n", 0, s) + 2  # with its doc comment, if any
e = min(i for i in (old.find("/// S8: ", s), old.find("fn s8(", s)) if i >= 0)
open(sys.argv[2], "w").write(old[:s] + block + old[e:])
EOF

echo "baseline_s7.sh: building $commit with this tree's S7 in $out/src" >&2
(cd "$out/src" && (cargo build --release --offline -p mpserver-benches --bin mpserver_scenarios \
    || cargo build --release -p mpserver-benches --bin mpserver_scenarios))
cp "$out/src/target/release/mpserver_scenarios" "$out/mpserver_scenarios"
rm -rf "$out/src/target"
echo "baseline_s7.sh: wrote $out/mpserver_scenarios" >&2
