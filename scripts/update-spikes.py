#!/usr/bin/env python3
"""How much the training loss jumps after each mask update of a run logged with --log-every 1.

For every update step u (a multiple of delta_t up to t_end, read from the run's config.toml),
prints max(loss over steps u+1..u+10) / mean(loss over steps u-9..u), then the mean of these
ratios and how many exceed 5. Standard library only.

    rigl train --method rigl --sparsity 0.98 --log-every 1 --out runs/r98
    python3 scripts/update-spikes.py runs/r98 [more run dirs...]
"""
import json
import re
import statistics
import sys


def config_value(text, key, default):
    m = re.search(rf"^{key}\s*=\s*([0-9.eE+-]+)", text, re.M)
    return float(m.group(1)) if m else default


for run in sys.argv[1:]:
    cfg = open(f"{run}/config.toml").read()
    delta_t = int(config_value(cfg, "delta_t", 100))
    loss = {}
    for line in open(f"{run}/metrics.jsonl"):
        d = json.loads(line)
        if d.get("kind") == "train":
            loss[d["step"]] = d["loss"]
    if not loss:
        sys.exit(f"{run}: no training lines in metrics.jsonl")
    last = max(loss)
    t_end = config_value(cfg, "t_end", 0.75)
    t_end = int(t_end * last) if t_end <= 1 else int(t_end)
    ratios = []
    for u in range(delta_t, t_end + 1, delta_t):
        before = [loss[s] for s in range(u - 9, u + 1) if s in loss]
        after = [loss[s] for s in range(u + 1, u + 11) if s in loss]
        if len(before) < 5 or len(after) < 5:
            continue
        ratios.append(max(after) / statistics.mean(before))
    if not ratios:
        sys.exit(f"{run}: log every step (--log-every 1) to see the updates")
    print(
        f"{run}: {len(ratios)} updates; loss after / before: mean {statistics.mean(ratios):.2f}, "
        f"max {max(ratios):.1f}, above 5x: {sum(r > 5 for r in ratios)}; "
        f"first ten: {' '.join(f'{r:.1f}' for r in ratios[:10])}"
    )
