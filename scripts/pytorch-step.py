#!/usr/bin/env python3
"""PyTorch's dense training step for the models rigl's `bench step` times, on this CPU, for scale.

Builds LeNet-5 and WRN-22-2 as SPEC section 8 and `rigl plan` describe them (LeNet-5-Caffe; the
official pre-activation WideResNet, depth 22, width 2, dropout 0.3), trains on random data with
SGD (lr 0.1, Nesterov momentum 0.9, weight decay 1e-4) and cross-entropy, and prints the median
wall time of a step (forward, backward, optimizer) after warm-up steps. Not part of the tests or
of rigl: a comparison `docs/performance.md` quotes. Needs `pip install torch`.

    python3 scripts/pytorch-step.py --model lenet5 --batch 100 --threads 2 --reps 30
    python3 scripts/pytorch-step.py --model wrn-22-2 --batch 128 --threads 2 --reps 5
"""
import argparse
import statistics
import time

import torch
from torch import nn


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))


class Block(nn.Module):
    """Pre-activation block: BN, ReLU, [1x1 projection from here], conv3x3, BN, ReLU, dropout,
    conv3x3, add."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, momentum=0.1, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
        self.drop = nn.Dropout(0.3)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.skip = None
        if cin != cout or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        a = torch.relu(self.bn1(x))
        shortcut = x if self.skip is None else self.skip(a)
        y = self.conv1(a)
        y = self.drop(torch.relu(self.bn2(y)))
        return self.conv2(y) + shortcut


def wrn_22_2():
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)]
    cin = 16
    for g, width in enumerate([32, 64, 128]):
        for b in range(3):
            layers.append(Block(cin, width, 2 if (g > 0 and b == 0) else 1))
            cin = width
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["lenet5", "wrn-22-2"], default="lenet5")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, shape = (lenet5(), (1, 28, 28)) if args.model == "lenet5" else (wrn_22_2(), (3, 32, 32))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    x = torch.randn(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(args.warmup + args.reps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"pytorch {torch.__version__} {args.model} batch {args.batch}, {args.threads} threads: "
          f"step {med * 1e3:.1f} ms median of {args.reps} "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}), "
          f"{args.batch / med:.0f} samples/s")


if __name__ == "__main__":
    main()
