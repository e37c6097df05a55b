#!/usr/bin/env bash
# The README's GEMM table: `rigl bench matmul` for every variant at the README's shapes ("chosen"
# marks the adapter's choice, `rigl info`), and numpy's float32 `a @ b` at 1024^3 before and after
# in the same sitting against `rigl bench matmul` at 1024^3 with the engine's own pick (the
# yardstick: the engine's GEMM against the machine's optimised BLAS).
#
#   scripts/gemm-table.sh [REPS] > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-10}
if ! python3 -c 'import numpy' 2>/dev/null; then
    echo "gemm-table.sh needs numpy with an optimised BLAS for the yardstick (pip install numpy, which bundles OpenBLAS)" >&2
    exit 1
fi
cargo build --release -q
BIN=target/release/rigl
numpy() {
    python3 - <<'PY'
import time
import numpy as np
a = np.random.rand(1024, 1024).astype(np.float32)
b = np.random.rand(1024, 1024).astype(np.float32)
for _ in range(3):
    a @ b
ts = []
for _ in range(21):
    t = time.perf_counter()
    a @ b
    ts.append(time.perf_counter() - t)
ts.sort()
print(f"{2 * 1024**3 / ts[10] / 1e9:.1f}")
PY
}
before=$(numpy)
chosen=$("$BIN" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kernels"]["gemm"])')
variants="rowblock tiled vec4 subgroup texture"
echo "| M×N×K | $(echo $variants | sed "s/ / | /g; s/$chosen/$chosen (chosen)/") |"
echo "|---|$(for _ in $variants; do printf -- '---|'; done)"
for shape in "256 256 256" "1024 1024 1024" "300 1000 784" "784 1000 300"; do
    set -- $shape
    row="| $1×$2×$3 |"
    for v in $variants; do
        cell=$("$BIN" bench matmul --m "$1" --n "$2" --k "$3" --variant "$v" --reps "$REPS" --json \
            | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.2f ms / %.1f (%s)" % (r["gpu_ms"], r["gflops"], r["timing"]))' \
            || echo "n/a")
        row="$row $cell |"
    done
    echo "$row"
done
after=$(numpy)
# Without --variant: the variant the engine runs 1024^3 with.
read -r best used < <("$BIN" bench matmul --reps "$REPS" --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["gflops"], r["variant"])')
python3 - "$before" "$after" "$best" "$used" <<'PY'
import sys
before, after, best, chosen = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print()
if min(before, after) < 50:
    # Debian's python3-numpy on the reference BLAS (libblas3) does about 5 GFLOP/s here.
    print(f"warning: numpy did {min(before, after):.1f} GFLOP/s: it is not using an optimised "
          "BLAS, so this is no yardstick (pip install numpy)", file=sys.stderr)
print(f"numpy float32 a @ b at 1024^3: {before:.1f} GFLOP/s before, {after:.1f} after; "
      f"rigl {chosen} at 1024^3 (measured again after): {best:.1f} GFLOP/s = "
      f"{best / max(before, after):.3f}x-{best / min(before, after):.3f}x numpy")
PY
