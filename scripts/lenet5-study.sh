#!/usr/bin/env bash
# The LeNet-5 methods study: dense, static, SET, SNFS and RigL at 90% and 95% sparsity (ERK), three
# seeds each, all with the same steps, on Fashion-MNIST; then the report and mean ± sd per setting.
# The settings (a run takes 3-6 minutes on lavapipe with 2 cores): all 60,000 training images,
# 2 epochs of batch 100 (1,200 steps), evaluation on all 10,000 test images; everything else rigl's
# defaults (ΔT 100, α 0.3 cosine, lr 0.1 cosine, SGD Nesterov 0.9, L2 1e-4).
# STUDY_FLAGS replaces those settings, e.g. the earlier short study:
#   STUDY_FLAGS="--train-samples 6000 --test-samples 5000 --epochs 5 --delta-t 25"
# SETTINGS picks the method:sparsity pairs (all nine by default), e.g. the 5-epoch study:
#   STUDY_FLAGS="--epochs 5" SETTINGS="rigl:0.9 static:0.9 dense:0" scripts/lenet5-study.sh runs/lenet5-study5
# Usage: scripts/lenet5-study.sh [OUT_DIR] [extra rigl train flags...]
# Re-running skips runs whose summary.json exists. RIGL=path picks the binary.
set -euo pipefail
out=${1:-runs/lenet5-study}
shift || true
rigl=${RIGL:-target/release/rigl}
[ -x "$rigl" ] || cargo build --release
mkdir -p "$out"
read -r -a settings <<< "${STUDY_FLAGS:---epochs 2}"
flags=(--model lenet5 "${settings[@]}")
runs=()
# The settings the target compares (RigL at 90% against dense and static) first, all seeds.
read -r -a specs <<< "${SETTINGS:-rigl:0.9 dense:0 static:0.9 set:0.9 snfs:0.9 rigl:0.95 static:0.95 set:0.95 snfs:0.95}"
for spec in "${specs[@]}"; do
    for seed in 0 1 2; do
        method=${spec%%:*}; s=${spec##*:}
        dir="$out/$method-$s-seed$seed"
        runs+=("$dir")
        if [ ! -f "$dir/summary.json" ]; then
            echo "== $(date +%T) $method sparsity $s seed $seed" >&2
            "$rigl" train "${flags[@]}" --method "$method" --sparsity "$s" --seed "$seed" \
                --out "$dir" --json "$@" > "$dir.json"
        fi
    done
done
"$rigl" report --out "$out/report.png" "${runs[@]}" > "$out/report.md"
python3 - "$out" <<'PY'
import json, sys, glob, statistics, collections
out = sys.argv[1]
acc = collections.defaultdict(list)
for f in glob.glob(f"{out}/*/summary.json"):
    s = json.load(open(f))
    name = f.split("/")[-2].rsplit("-seed", 1)[0]
    acc[name].append((100 * s["test_accuracy"], s["train_flops_vs_dense"], s["samples_per_sec"]))
print("| method | sparsity | test accuracy (mean ± sd) | training FLOPs | samples/s |")
print("|---|---|---|---|---|")
for name in sorted(acc, key=lambda n: (float(n.rsplit("-", 1)[1]), n)):
    a = [x[0] for x in acc[name]]
    m, s = name.rsplit("-", 1)
    sd = statistics.stdev(a) if len(a) > 1 else 0.0
    print(f"| {m} | {s} | {statistics.mean(a):.2f} ± {sd:.2f} (n={len(a)}) "
          f"| {statistics.mean(x[1] for x in acc[name]):.3f}x | {statistics.mean(x[2] for x in acc[name]):.0f} |")
PY
