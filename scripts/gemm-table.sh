#!/usr/bin/env bash
# The GEMM table of docs/performance.md: `rigl bench matmul` for every variant at its shapes ("chosen"
# marks the adapter's choice, `rigl info`), then numpy's float32 `a @ b` at 1024^3 in alternation
# with `rigl bench matmul` at 1024^3 with the engine's own pick, ROUNDS (default 3) times each (the
# yardstick: the engine's GEMM against the machine's optimised BLAS, in the same sitting). The
# first line names the host's CPU: the ratio depends on it.
#
#   [ROUNDS=3] scripts/gemm-table.sh [REPS] > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-10}
ROUNDS=${ROUNDS:-3}
[ "$ROUNDS" -ge 1 ] 2>/dev/null || { echo "gemm-table.sh: ROUNDS must be a whole number of at least 1" >&2; exit 2; }
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
# The host: the ratio to numpy depends on the CPU under lavapipe (how it issues separate
# multiplies and adds against the FMAs of numpy's BLAS), so every table says which one it is.
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
family=$(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -1)
model=$(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo "host: ${cpu:-unknown CPU} (family ${family:-?}, model ${model:-?}), $(nproc) cores; $("$BIN" info --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["adapter"] + ", " + r.get("driver_info", ""))')"
echo
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
# The yardstick: numpy and the engine's 1024^3 product (without --variant: the variant the
# engine runs that shape with) in alternation, ROUNDS times each. The host's speed drifts (other
# tenants of a shared machine), so each side is taken at its best median, as sparse-table.sh
# does, and the ratio is best against best; every round is printed too.
rounds=()
for _ in $(seq "$ROUNDS"); do
    np=$(numpy)
    read -r eng used < <("$BIN" bench matmul --reps "$REPS" --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["gflops"], r["variant"])')
    rounds+=("$np,$eng")
done
python3 - "$used" "${rounds[@]}" <<'PY'
import sys
chosen = sys.argv[1]
rounds = [tuple(float(x) for x in r.split(",")) for r in sys.argv[2:]]
nps, engs = [r[0] for r in rounds], [r[1] for r in rounds]
print()
if min(nps) < 50:
    # Debian's python3-numpy on the reference BLAS (libblas3) does about 5 GFLOP/s here.
    print(f"warning: numpy did {min(nps):.1f} GFLOP/s: it is not using an optimised "
          "BLAS, so this is no yardstick (pip install numpy)", file=sys.stderr)
print("rounds (numpy float32 a @ b, rigl " + chosen + ") at 1024^3, GFLOP/s: "
      + "; ".join(f"{a:.1f}, {b:.1f}" for a, b in rounds))
print(f"best of each: numpy {max(nps):.1f} GFLOP/s, rigl {chosen} {max(engs):.1f} GFLOP/s "
      f"= {max(engs) / max(nps):.3f}x numpy")
PY
