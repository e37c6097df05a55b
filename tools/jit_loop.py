"""Prints what llvmpipe's JIT makes of the hottest GPU loop of a `rigl` command: runs the command
(by default `rigl bench matmul` at 1024^3 with the `texture` GEMM), attaches gdb while it runs,
takes the machine-code region where a lavapipe worker thread is, disassembles it, finds the
largest loop around the sampled addresses and counts its instructions by kind. Needs gdb
(`apt-get install gdb`) and permission to attach (root, or ptrace_scope 0).

    python3 tools/jit_loop.py [--wait SECONDS] [--dump FILE] [-- RIGL ARGS...]

The analysis of the GEMM's inner loop in docs/performance.md comes from this script.
"""
import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import time

DEFAULT = ['bench', 'matmul', '--m', '1024', '--n', '1024', '--k', '1024', '--variant', 'texture',
           '--reps', '400', '--json']


def kind(op, arg):
    mem = '(' in arg
    if op in ('vmulps', 'vaddps', 'vfmadd231ps', 'vfmadd213ps', 'vfmadd132ps'):
        return op
    if op.startswith('vpunpck') or op.startswith('vunpck') or op.startswith('vshuf'):
        return 'transpose (unpack/shuffle)'
    if op in ('vpermd', 'vpermps', 'vpbroadcastd', 'vbroadcastss'):
        return 'broadcast' + (' from memory' if mem else '')
    if op == 'vblendvps':
        return 'blend (vblendvps)'
    if op in ('vmovaps', 'vmovups', 'vmovdqa', 'vmovdqu', 'vmovdqa32', 'vmovdqa64'):
        if not mem:
            return 'vector register move'
        return 'vector store' if arg.endswith(')') else 'vector load'
    if op in ('vinserti128', 'vinsertf128', 'vinserti32x4'):
        return 'gather: load + insert'
    if op in ('vpextrd', 'vmovd', 'vextracti128', 'movslq', 'cltq'):
        return 'gather: lane extraction'
    if op in ('vpand', 'vpandd'):
        return 'and (out-of-bounds lanes)'
    return 'other'


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bin', default='target/release/rigl')
    ap.add_argument('--wait', type=float, default=4.0, help='seconds before attaching')
    ap.add_argument('--dump', help='write the loop disassembly here')
    ap.add_argument('args', nargs='*')
    o = ap.parse_args()
    env = dict(os.environ, NODEVICE_SELECT='1')
    env.setdefault('WGPU_BACKEND', 'vulkan')
    proc = subprocess.Popen([o.bin] + (o.args or DEFAULT), stdout=subprocess.DEVNULL, env=env)
    try:
        time.sleep(o.wait)
        if proc.poll() is not None:
            sys.exit('the command ended before gdb attached; give it more work or a shorter --wait')
        pid = str(proc.pid)
        regions = []
        for line in open(f'/proc/{pid}/maps'):
            f = line.split()
            if 'x' in f[1] and len(f) < 6:  # anonymous executable: JIT code
                regions.append(tuple(int(x, 16) for x in f[0].split('-')))
        hit, pcs = [], []
        for _ in range(10):  # a sample can catch every worker outside the JIT code
            out = subprocess.run(['gdb', '-p', pid, '-batch', '-ex', 'thread apply all p/x $pc'],
                                 capture_output=True, text=True).stdout
            pcs = sorted({int(x, 16) for x in re.findall(r'= (0x[0-9a-f]+)', out)})
            hit = [(s, e) for s, e in regions if any(s <= p < e for p in pcs)]
            if hit:
                break
        if not hit:
            sys.exit('no lavapipe thread was in JIT code in 10 samples')
        s, e = hit[0]
        dis = subprocess.run(['gdb', '-p', pid, '-batch', '-ex', f'x/{(e - s) // 2}i {s:#x}'],
                             capture_output=True, text=True).stdout
    finally:
        proc.kill()
    ins = []
    for line in dis.split('\n'):
        m = re.match(r'\s+(0x[0-9a-f]+)(?:\s+<[^>]*>)?:\s+(\S+)\s*(.*)', line)
        if m and s <= int(m.group(1), 16) < e:
            ins.append((int(m.group(1), 16), m.group(2), m.group(3)))
    hot = [p for p in pcs if s <= p < e]
    best = None
    for addr, op, arg in ins:
        m = re.match(r'(0x[0-9a-f]+)', arg) if op.startswith('j') else None
        if m:
            target = int(m.group(1), 16)
            if s <= target < addr and any(target <= p <= addr for p in hot):
                if best is None or addr - target > best[1] - best[0]:
                    best = (target, addr)
    if best is None:
        sys.exit('no loop around the sampled addresses; try again')
    body = [(a, op, arg) for a, op, arg in ins if best[0] <= a <= best[1]]
    print(f'loop {best[0]:#x}..{best[1]:#x}: {len(body)} instructions, '
          f'{best[1] - best[0]} bytes')
    for k, n in collections.Counter(kind(op, arg) for _, op, arg in body).most_common():
        print(f'{n:6d}  {k}')
    if o.dump:
        with open(o.dump, 'w') as f:
            f.writelines(f'{a:#x}: {op} {arg}\n' for a, op, arg in body)


if __name__ == '__main__':
    main()
