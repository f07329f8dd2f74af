"""Speed and memory of the model-stealing attacks on CPU.

Three measurements, each printed as a Markdown table row (results go to BENCHMARKS.md):

``rates``   queries per second of every attack variant (whole attack: querying, augmentation,
            generator and student training) at the ``smoke`` profile (or ``--profile quick``)
            against a NaiveNet victim on Fashion-MNIST shapes;
``dfme``    DFME queries per second at the scaled-down generator (quick profile: ngf 16, B 128,
            m 1, d_iter 5) for a fixed number of iterations, soft and hard labels;
``memory``  peak resident memory of a Knockoff run over 5k and 50k-image query pools,
            each measured in a fresh subprocess as the rise of the kernel's high-water mark
            (VmHWM, reset through /proc/self/clear_refs) above the resident size once the pool is
            loaded, under glibc's default allocator and under a fixed mmap threshold; the
            difference between the pool sizes gives the memory held per pool image (streaming:
            one victim output; copying: one image more). With
            ``--copy`` the same run is repeated with the transfer set materialised as a copy of
            the queried images (the pre-streaming implementation) for comparison.

    python benchmarks/stealing.py [rates|dfme|memory|all] [--profile smoke|quick] [--copy]

Timings are ratios within one process on a shared machine; never asserted in tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

import torch

from _proc import status  # benchmarks/ is the script's folder

from wmbench.api import AttackContext
from wmbench.blackbox import Blackbox
from wmbench.cache import ArtifactStore
from wmbench.config import TrainConfig, VerifyConfig, resolve
from wmbench.data import DataBundle, Split, load_data
from wmbench.models import build_model
from wmbench.registry import ATTACKS

CPU = torch.device("cpu")
VARIANTS = [("knockoff", "soft"), ("knockoff", "hard"), ("jbda", "soft"), ("jbda", "hard"), ("distill", "soft"),
            ("dfme", "soft"), ("dfme", "hard"), ("dfms_hl", "hard")]


def _victim(data: DataBundle) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("naivenet", in_channels=data.channels, num_classes=data.num_classes, input_size=data.size,
                        mean=data.mean, std=data.std)
    return model.eval()


def _ctx(data: DataBundle, profile: str) -> AttackContext:
    empty = Split(data.test.x[:0], data.test.y[:0])
    view = dataclasses.replace(data, owner=empty, test=empty)
    return AttackContext(data=view, arch="naivenet", train=TrainConfig(), verify=VerifyConfig(), seed=0, device=CPU,
                         store=ArtifactStore("/tmp/wmbench-bench-unused"), profile=profile, progress=False,
                         victim_arch="naivenet")


def _run(name: str, labels: str, data: DataBundle, profile: str, **overrides: Any) -> Dict[str, float]:
    cls = ATTACKS.get(name)
    cfg = resolve(cls.Config, profile, {"labels": labels, **overrides}, section=f"attacks.{name}")
    box = Blackbox(_victim(data), num_classes=data.num_classes, input_shape=data.shape,
                   mode="labels" if labels == "hard" else "probs")
    started = time.perf_counter()
    outcome = cls(cfg).run(box, _ctx(data, profile))
    wall = time.perf_counter() - started
    return {"queries": outcome.queries, "wall_s": wall, "qps": outcome.queries / wall}


def rates(profile: str) -> None:
    data = load_data("fmnist", attacker_size=1000 if profile == "smoke" else None, owner_size=100, test_size=100)
    print(f"| attack | labels | profile | queries | wall (s) | queries/s |")
    print("|---|---|---|---|---|---|")
    for name, labels in VARIANTS:
        r = _run(name, labels, data, profile)
        print(f"| {name} | {labels} | {profile} | {r['queries']} | {r['wall_s']:.1f} | {r['qps']:.0f} |", flush=True)


def dfme(iterations: int = 20) -> None:
    data = load_data("fmnist", attacker_size=100, owner_size=100, test_size=100)
    print("| DFME (quick: ngf 16, B 128, m 1, d_iter 5) | labels | iterations | queries | s/iter | queries/s |")
    print("|---|---|---|---|---|---|")
    for labels in ("soft", "hard"):
        cost = resolve(ATTACKS.get("dfme").Config, "quick", {"labels": labels}).cost_per_iteration
        r = _run("dfme", labels, data, "quick", budget=cost * iterations, snapshots=0)
        print(f"| naivenet student | {labels} | {iterations} | {r['queries']} | {r['wall_s'] / iterations:.2f} "
              f"| {r['qps']:.0f} |", flush=True)



def _memory_child(copy: bool, size: int) -> Dict[str, float]:
    """Runs in a fresh process: Knockoff (1 epoch) over a ``size``-image pool; peak RSS rise.

    Before the baseline is taken, a throwaway student trains 4 steps and the victim answers one
    batch outside the counted interface, so that the code pages torch maps on first use (oneDNN
    kernels, autograd) are resident already and the rise is memory the attack itself holds."""
    torch.set_num_threads(1)
    full = load_data("fmnist")
    pool = Split(torch.cat([full.owner.x, full.attacker.x])[:size].clone(),
                 torch.cat([full.owner.y, full.attacker.y])[:size].clone())
    data = dataclasses.replace(full, attacker=pool)
    ctx = _ctx(data, "quick")
    cls = ATTACKS.get("knockoff")
    cfg = resolve(cls.Config, "quick", {"labels": "soft", "epochs": 1})
    victim = _victim(data)
    from wmbench.attacks._stealing import student_model

    with torch.no_grad():
        warm_y = torch.softmax(victim(pool.x[:512]), 1)
    ctx.fit(student_model(ctx, None, "knockoff", "warmup"), (pool.x[:512].clone(), warm_y), cfg=cfg.train_config(),
            seed=0)
    box = Blackbox(victim, num_classes=10, input_shape=data.shape)
    del full, warm_y
    import gc

    gc.collect()
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    started = time.perf_counter()
    if copy:  # the pre-streaming implementation: copy the queried images, then train on the copy
        from wmbench.utils import generator

        order = torch.cat([torch.randperm(len(pool), generator=generator(0))])
        x = pool.x[order]
        y = torch.cat([box(x[i:i + 256]) for i in range(0, len(order), 256)])
        student = student_model(ctx, None, "knockoff", "init")
        ctx.fit(student, (x, y), cfg=cfg.train_config(), seed=0)
        queries = box.queries
    else:
        queries = cls(cfg).run(box, ctx).queries
    wall = time.perf_counter() - started
    peak = status("VmHWM")
    return {"queries": queries, "wall_s": wall, "rise": peak - base, "base": base,
            "pool": pool.x.numel() * pool.x.element_size(), "outputs": size * 10 * 4,
            "batch": 256 * pool.x[0].numel() * 4, "image": pool.x[0].numel() * pool.x.element_size()}


POOL_SIZES = (5_000, 50_000)
#: glibc's default malloc adapts its mmap threshold and keeps freed heap memory, so the peak of
#: a training loop varies from run to run by hundreds of MB; a fixed threshold makes every
#: tensor above 1 MB its own mapping, returned to the kernel when freed (deterministic, slower).
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def _child(mode: str, size: int, env: Dict[str, str]) -> Dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "_memory_child", mode, str(size)], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(copy: bool, repeats: int = 3) -> None:
    """Peak RSS rise of one Knockoff epoch at two pool sizes, under glibc's default allocator
    (``repeats`` runs: min / median / max, since its peak is not reproducible) and under a fixed
    mmap threshold (one run: reproducible to the MB). The difference between the two pool sizes
    is what the attack holds per pool image: about one victim output when streaming, one image
    more when copying."""
    mb = lambda v: v / 2 ** 20  # noqa: E731
    print("| Knockoff, 1 epoch | pool images | pool (MB) | victim outputs (MB) | one query batch (MB) "
          f"| rise, glibc default, {repeats} runs: min / median / max (MB) | rise, fixed mmap threshold (MB) |")
    print("|---|---|---|---|---|---|---|")
    fixed: Dict[tuple, float] = {}
    modes = ["stream", "copy"] if copy else ["stream"]
    for mode in modes:
        label = "streaming (wmbench)" if mode == "stream" else "copy of the queried images"
        for size in POOL_SIZES:
            runs = sorted(_child(mode, size, {})["rise"] for _ in range(repeats))
            r = _child(mode, size, FIXED_MALLOC)
            fixed[(mode, size)] = r["rise"]
            print(f"| {label} | {size} | {mb(r['pool']):.0f} | {mb(r['outputs']):.1f} | {mb(r['batch']):.2f} "
                  f"| {mb(runs[0]):.0f} / {mb(runs[len(runs) // 2]):.0f} / {mb(runs[-1]):.0f} "
                  f"| {mb(r['rise']):.0f} |", flush=True)
    print()
    lo, hi = POOL_SIZES
    for mode in modes:
        slope = (fixed[(mode, hi)] - fixed[(mode, lo)]) / (hi - lo)
        print(f"{mode}: {slope:.0f} bytes held per extra pool image under the fixed threshold "
              f"(one 28x28 float image = 3136 bytes, one output + index = 48 bytes)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_memory_child":
        print(json.dumps(_memory_child(sys.argv[2] == "copy", int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["rates", "dfme", "memory", "all"])
    parser.add_argument("--profile", default="smoke", choices=["smoke", "quick"])
    parser.add_argument("--copy", action="store_true", help="also measure the copying (pre-streaming) transfer set")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.what in ("rates", "all"):
        rates(args.profile)
    if args.what in ("dfme", "all"):
        dfme()
    if args.what in ("memory", "all"):
        memory(args.copy)


if __name__ == "__main__":
    main()
