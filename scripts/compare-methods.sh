#!/usr/bin/env bash
# Trains every method at 90% and 98% sparsity (ERK) with the default settings on Fashion-MNIST,
# three seeds each, then prints the comparison table (rigl report) and mean ± spread per setting.
# Usage: scripts/compare-methods.sh [OUT_DIR] [extra rigl train flags...]
# Re-running skips runs whose summary.json already exists.
set -euo pipefail
out=${1:-runs/compare}
shift || true
rigl=${RIGL:-target/release/rigl}
[ -x "$rigl" ] || cargo build --release
mkdir -p "$out"
runs=()
for seed in 0 1 2; do
    for spec in dense:0.9 static:0.9 set:0.9 snfs:0.9 rigl:0.9 prune:0.9 \
                static:0.98 set:0.98 snfs:0.98 rigl:0.98 prune:0.98; do
        method=${spec%%:*}; s=${spec##*:}
        dir="$out/$method-$s-seed$seed"
        runs+=("$dir")
        if [ ! -f "$dir/summary.json" ]; then
            echo "== $method sparsity $s seed $seed" >&2
            "$rigl" train --method "$method" --sparsity "$s" --seed "$seed" --out "$dir" --json "$@" \
                > "$dir.json"
        fi
    done
done
"$rigl" report --out "$out/report.png" "${runs[@]}" > "$out/report.md"
RIGL_BIN="$rigl" python3 - "$out" <<'PY'
import json, os, sys, glob, statistics, subprocess, collections
out = sys.argv[1]
acc = collections.defaultdict(list)
for f in glob.glob(f"{out}/*/summary.json"):
    s = json.load(open(f))
    name = f.split("/")[-2].rsplit("-seed", 1)[0]
    dead = [l["dead_units"] for l in s["layers"] if l.get("dead_units") is not None]
    if not dead and len(s["layers"]) > 1:
        # Runs from before the summary counted them: rigl eval does.
        e = subprocess.run([os.environ["RIGL_BIN"], "eval", "--checkpoint", os.path.dirname(f), "--json"],
                           capture_output=True, text=True, check=True)
        dead = json.loads(e.stdout)["dead_units"]
    acc[name].append((100 * s["test_accuracy"], s["train_flops_vs_dense"], s["samples_per_sec"], dead))
print("| method | sparsity | test accuracy (mean ± sd, 3 seeds) | train FLOPs | samples/s | dead hidden units (mean) |")
print("|---|---|---|---|---|---|")
for name in sorted(acc):
    a = [x[0] for x in acc[name]]
    m, s = name.rsplit("-", 1)
    dead = " / ".join(f"{statistics.mean(x[3][l] for x in acc[name]):.0f}" for l in range(len(acc[name][0][3])))
    print(f"| {m} | {s if m != 'dense' else '0'} | {statistics.mean(a):.2f} ± {statistics.stdev(a) if len(a) > 1 else 0:.2f} (n={len(a)}) "
          f"| {statistics.mean(x[1] for x in acc[name]):.3f}x | {statistics.mean(x[2] for x in acc[name]):.0f} | {dead} |")
PY
