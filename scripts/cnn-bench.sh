#!/usr/bin/env bash
# The CNN step and convolution figures of docs/performance.md#convolutions: LeNet-5 (batch 100)
# and WRN-22-2 (batch 128) training steps, dense and masked at 90% (alternating, since the host's
# speed drifts), and two dense convolutions against the GEMM of the same work.
# Usage: scripts/cnn-bench.sh [rounds]   (RIGL=path picks the binary)
set -euo pipefail
rigl=${RIGL:-target/release/rigl}
[ -x "$rigl" ] || cargo build --release
rounds=${1:-2}
export NODEVICE_SELECT=1 WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
for r in $(seq "$rounds"); do
    for s in 0 0.9; do
        echo "round $r: $("$rigl" bench step --model lenet5 --batch 100 --sparsity "$s" 2>&1 | tail -1)"
    done
done
for r in $(seq "$rounds"); do
    for s in 0 0.9; do
        echo "round $r: $("$rigl" bench step --model wrn-22-2 --batch 128 --sparsity "$s" --warmup 1 --reps 3 2>&1 | tail -1)"
    done
done
"$rigl" bench conv --cin 64 --cout 64 --kernel 3 --hw 16 --batch 128
"$rigl" bench conv --cin 20 --cout 50 --kernel 5 --hw 12 --batch 100 --padding valid
