#!/usr/bin/env bash
# README's table of CNN step time and GPU bytes against sparsity: LeNet-5 (batch 100) and
# WRN-22-2 (batch 128) training steps (`rigl bench step --model`, RigL, ERK) at 0 (dense), 50, 80,
# 90, 95 and 98% sparsity, masked-dense against compressed (`--kernels sparse`) and the trainer's
# default (`--kernels auto`, per-tensor products as timed), each sparsity's runs alternated since
# the host's speed drifts. One JSON object per line into OUT (default
# runs/cnn-sparsity-table.jsonl), then a Markdown table.
# Usage: scripts/cnn-sparsity-table.sh [OUT]   (RIGL=path picks the binary; MODELS="lenet5"
# limits the models; WRN_REPS and LENET_REPS set the timed repetitions)
set -euo pipefail
rigl=${RIGL:-target/release/rigl}
[ -x "$rigl" ] || cargo build --release
out=${1:-runs/cnn-sparsity-table.jsonl}
mkdir -p "$(dirname "$out")"
: > "$out"
export NODEVICE_SELECT=1 WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
models=${MODELS:-"lenet5 wrn-22-2"}
for model in $models; do
    if [ "$model" = wrn-22-2 ]; then
        batch=128 warmup=1 reps=${WRN_REPS:-2}
    else
        batch=100 warmup=2 reps=${LENET_REPS:-10}
    fi
    run() {
        "$rigl" bench step --model "$model" --batch "$batch" --warmup "$warmup" --reps "$reps" \
            --json "$@" | sed "s/^{/{\"args\":\"$*\",/" >> "$out"
    }
    run --method dense
    for sp in 0.5 0.8 0.9 0.95 0.98; do
        for k in masked sparse auto; do
            run --sparsity "$sp" --kernels "$k"
        done
    done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mib = lambda b: b / 1048576
for model in dict.fromkeys(r["model"] for r in rows):
    rs = [r for r in rows if r["model"] == model]
    dense = next(r for r in rs if r["sparsity"] == 0)
    print(f"\n{model}, batch {dense['batch']}: dense step {dense['step_ms']:.1f} ms, "
          f"{mib(dense['dense_bytes']):.2f} MiB of weights, gradients and momentum")
    print("| sparsity | masked | compressed | auto | compressed vs dense | GPU bytes (compressed) |")
    print("|---|---|---|---|---|---|")
    for sp in sorted({r["sparsity"] for r in rs if r["sparsity"] > 0}):
        by = {r["args"].split("--kernels ")[1]: r for r in rs
              if r["sparsity"] == sp and "--kernels" in r["args"]}
        m, c, a = by["masked"], by["sparse"], by["auto"]
        print(f"| {sp:.0%} | {m['step_ms']:.1f} ms | {c['step_ms']:.1f} ms | {a['step_ms']:.1f} ms "
              f"| {c['step_ms'] / dense['step_ms']:.2f}x | {mib(c['model_bytes']):.2f} MiB "
              f"({c['model_bytes'] / c['dense_bytes']:.3f}x) |")
PY
