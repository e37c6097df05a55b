#!/usr/bin/env bash
# Step time and samples/s of the default model (784-300-100-10, RigL, ERK) against sparsity, at
# batch 100 and 1000, on compressed sparse kernels and on masked-dense ones, with GPU bytes; the
# table of docs/performance.md (the README shows part of it). Each cell is the best of RUNS medians of `rigl bench step --reps 30` (lavapipe on
# a shared machine is noisy; the best median is the most repeatable figure).
#
#   scripts/sparse-table.sh [RUNS] > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-2}
cargo build --release -q
BIN=target/release/rigl
best() { # args...
    local b=""
    for _ in $(seq "$RUNS"); do
        "$BIN" bench step --reps 30 --json "$@"
    done | python3 -c '
import json, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
print(json.dumps(min(runs, key=lambda r: r["step_ms"])))'
}
{
for batch in 100 1000; do
    best --method dense --batch "$batch"
    for s in 0.5 0.8 0.9 0.95 0.98; do
        for k in sparse masked; do
            best --method rigl --kernels "$k" --sparsity "$s" --batch "$batch"
        done
    done
done
} > "${TMPDIR:-/tmp}/rigl-sparse-table.jsonl"
python3 - "${TMPDIR:-/tmp}/rigl-sparse-table.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dense = {r["batch"]: r for r in rows if r["method"] == "dense"}
def mib(b):
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 1024:.0f} KiB"
print("| batch | sparsity | kernels | step (ms) | samples/s | vs dense step | update step (ms) | GPU bytes (w+g+mom+mask/index) | vs dense |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    d = dense[r["batch"]]
    upd = f"{r['update_step_ms']:.1f}" if r.get("update_step_ms") else "-"
    print(f"| {r['batch']} | {r['sparsity']:.2f} | {r['kernels']['kernels']} | {r['step_ms']:.2f} | "
          f"{r['samples_per_sec']:.0f} | {r['step_ms'] / d['step_ms']:.3f}x | {upd} | "
          f"{mib(r['gpu_memory']['model_bytes'])} | {r['gpu_memory']['ratio_vs_dense']:.3f}x |")
PY
