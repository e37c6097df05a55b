#!/usr/bin/env bash
# The compressed-convolution figures of docs/performance.md#sparse-convolutions: every distinct
# convolution of WRN-22-2 (batch 128) and LeNet-5 (batch 100) at 50 to 98% sparsity, the three
# products masked-dense and compressed (alternated within each run, since the host's speed
# drifts). One JSON object per line into OUT (default runs/sparse-conv-bench.jsonl), then a table.
# Usage: scripts/sparse-conv-bench.sh [OUT]   (RIGL=path picks the binary)
set -euo pipefail
rigl=${RIGL:-target/release/rigl}
[ -x "$rigl" ] || cargo build --release
out=${1:-runs/sparse-conv-bench.jsonl}
mkdir -p "$(dirname "$out")"
: > "$out"
export NODEVICE_SELECT=1 WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
# cin cout kernel stride hw batch padding (model)
shapes=(
    "16 32 3 1 32 128 same wrn"
    "32 32 3 1 32 128 same wrn"
    "32 64 3 2 32 128 same wrn"
    "64 64 3 1 16 128 same wrn"
    "64 128 3 2 16 128 same wrn"
    "128 128 3 1 8 128 same wrn"
    "32 64 1 2 32 128 same wrn"
    "1 20 5 1 28 100 valid lenet5"
    "20 50 5 1 12 100 valid lenet5"
)
for sp in 0.5 0.8 0.9 0.95 0.98; do
    for s in "${shapes[@]}"; do
        read -r cin cout k st hw b pad model <<< "$s"
        "$rigl" bench conv --cin "$cin" --cout "$cout" --kernel "$k" --stride "$st" --hw "$hw" \
            --batch "$b" --padding "$pad" --sparsity "$sp" --reps 3 --json \
            | sed "s/^{/{\"model\":\"$model\",/" >> "$out"
    done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| model | conv | sparsity | forward | input grad | weight grad | useful GFLOP/s (fwd) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    k = {x["kernel"]: x for x in r["kernels"]}
    conv = f'{r["kernel"]}x{r["kernel"]} {r["cin"]}->{r["cout"]} {r["hw"]}x{r["hw"]} s{r["stride"]}'
    cells = [f'{k[n]["compressed_ms"]:.1f} / {k[n]["masked_ms"]:.1f} ms ({k[n]["ratio"]:.2f}x)'
             for n in ("forward", "input_grad", "weight_grad")]
    print(f'| {r["model"]} | {conv} | {r["sparsity"]:.0%} | ' + " | ".join(cells)
          + f' | {k["forward"]["useful_gflops"]:.1f} |')
PY
