"""Speed and memory of the model-stealing attacks on CPU.

Three measurements, each printed as a Markdown table row (results go to BENCHMARKS.md):

``rates``   queries per second of every attack variant (whole attack: querying, augmentation,
            generator and student training) at the ``smoke`` profile (or ``--profile quick``)
            against a NaiveNet victim on Fashion-MNIST shapes;
``dfme``    DFME queries per second at the scaled-down generator (quick profile: ngf 16, B 128,
            m 1, d_iter 5) for a fixed number of iterations, soft and hard labels;
``memory``  peak resident memory of a Knockoff run over a 50 k-image query pool, measured in a
            fresh subprocess as the rise of the kernel's high-water mark (VmHWM, reset through
            /proc/self/clear_refs) above the resident size once the pool is loaded; compared
            with the bytes of the pool, of the victim outputs, and of one query batch. With
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


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _memory_child(copy: bool) -> Dict[str, float]:
    """Runs in a fresh process: Knockoff (1 epoch) over a 50k pool; peak RSS rise above the pool."""
    torch.set_num_threads(1)
    full = load_data("fmnist")
    pool = Split(torch.cat([full.owner.x, full.attacker.x])[:50_000].clone(),
                 torch.cat([full.owner.y, full.attacker.y])[:50_000].clone())
    data = dataclasses.replace(full, attacker=pool)
    ctx = _ctx(data, "quick")
    cls = ATTACKS.get("knockoff")
    cfg = resolve(cls.Config, "quick", {"labels": "soft", "epochs": 1})
    box = Blackbox(_victim(data), num_classes=10, input_shape=data.shape)
    del full
    import gc

    gc.collect()
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    started = time.perf_counter()
    if copy:  # the pre-streaming implementation: copy the queried images, then train on the copy
        from wmbench.attacks._stealing import student_model
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
    peak = _status("VmHWM")
    return {"queries": queries, "wall_s": wall, "rise": peak - base, "base": base,
            "pool": pool.x.numel() * pool.x.element_size(), "outputs": 50_000 * 10 * 4,
            "batch": 256 * pool.x[0].numel() * 4}


def memory(copy: bool) -> None:
    print("| Knockoff, 50k pool, 1 epoch | queries | pool (MB) | outputs (MB) | one batch (MB) | peak RSS rise (MB) "
          "| rise / pool |")
    print("|---|---|---|---|---|---|---|")
    for mode in (["stream", "copy"] if copy else ["stream"]):
        out = subprocess.run([sys.executable, __file__, "_memory_child", mode], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mb = lambda v: v / 2 ** 20  # noqa: E731
        label = "streaming (wmbench)" if mode == "stream" else "copy of the queried images"
        print(f"| {label} | {r['queries']} | {mb(r['pool']):.0f} | {mb(r['outputs']):.1f} | {mb(r['batch']):.2f} "
              f"| {mb(r['rise']):.0f} | {r['rise'] / r['pool']:.2f} |", flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_memory_child":
        print(json.dumps(_memory_child(sys.argv[2] == "copy")))
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
