"""Max-pooling on CPU: ``wmbench.models.base.MaxPool2d`` (channels-last round trip) against
``torch.nn.MaxPool2d`` (issue 14 item 5: where the time of the ``quick`` grid goes).

A profile of DFME at the ``quick`` generator showed ``max_pool2d`` taking as long as every
convolution together. Three measurements, each plain against ours in one process, one torch
thread unless ``--threads``:

``ops``     NaiveNet's two pools, forward and forward + backward;
``train``   training steps (Adam, batch 128) of NaiveNet (1×28×28), the CW VGG-like net (3×32×32)
            and the CIFAR AlexNet (1×28×28), with the final weights compared bit for bit;
``dfme``    DFME at the ``quick`` generator, 10 iterations, soft labels, NaiveNet victim and student,
            with the student's final weights compared bit for bit.

    python benchmarks/cpu_pooling.py [ops|train|dfme|all] [--threads N]

Timings are ratios within one process on a shared machine; never asserted in tests.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from wmbench.models import build_model
from wmbench.models.base import MaxPool2d


@contextlib.contextmanager
def plain_pooling() -> Iterator[None]:
    """Every ``MaxPool2d`` behaves as ``nn.MaxPool2d`` inside the block."""
    ours = MaxPool2d.forward
    MaxPool2d.forward = nn.MaxPool2d.forward
    try:
        yield
    finally:
        MaxPool2d.forward = ours


def _best(fn: Callable[[], None], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ops() -> None:
    print("| pool input | pass | nn.MaxPool2d (ms) | ours (ms) | speed-up |")
    print("|---|---|---|---|---|")
    pool = MaxPool2d(2)
    for shape in [(128, 32, 28, 28), (128, 64, 14, 14)]:
        x = torch.randn(*shape).relu()
        for what in ("forward", "forward + backward"):
            def step() -> None:
                for _ in range(10):
                    if what == "forward":
                        with torch.no_grad():
                            pool(x)
                    else:
                        xs = x.clone().requires_grad_(True)
                        pool(xs).sum().backward()
            with plain_pooling():
                plain = _best(step) / 10
            ours = _best(step) / 10
            print(f"| {'×'.join(map(str, shape))} | {what} | {plain * 1e3:.2f} | {ours * 1e3:.2f} | {plain / ours:.2f} |")


def _train(arch: str, channels: int, size: int, steps: int = 30) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=10, input_size=size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(steps, 128, channels, size, size, generator=gen)
    y = torch.randint(0, 10, (steps, 128), generator=gen)
    for i in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train() -> None:
    print("| model | input | steps | nn.MaxPool2d (s) | ours (s) | speed-up | same weights |")
    print("|---|---|---|---|---|---|---|")
    for arch, channels, size in [("naivenet", 1, 28), ("cwnet", 3, 32), ("alexnet_cifar", 1, 28)]:
        out = {}

        def run(key: str) -> None:
            out[key] = _train(arch, channels, size)
        with plain_pooling():
            plain = _best(lambda: run("plain"), repeats=3)
        ours = _best(lambda: run("ours"), repeats=3)
        same = torch.equal(out["plain"], out["ours"])
        print(f"| {arch} | {channels}×{size}×{size} | 30 | {plain:.2f} | {ours:.2f} | {plain / ours:.2f} | {same} |")


def dfme() -> None:
    from stealing import _ctx, _victim  # benchmarks/ is the script's folder
    from wmbench.blackbox import Blackbox
    from wmbench.config import resolve
    from wmbench.data import load_data
    from wmbench.registry import ATTACKS

    data = load_data("fmnist", attacker_size=100, owner_size=100, test_size=100)
    cls = ATTACKS.get("dfme")
    cost = resolve(cls.Config, "quick", {"labels": "soft"}).cost_per_iteration
    cfg = resolve(cls.Config, "quick", {"labels": "soft", "budget": cost * 10, "snapshots": 0})
    print("| DFME (quick, 10 iterations, soft) | nn.MaxPool2d (s) | ours (s) | speed-up | same student |")
    print("|---|---|---|---|---|")
    out, times = {}, {}
    for key in ("plain", "ours"):
        victim = _victim(data)
        ctx = _ctx(data, "quick")
        box = Blackbox(victim, num_classes=10, input_shape=(1, 28, 28), mode="probs")
        with plain_pooling() if key == "plain" else contextlib.nullcontext():
            start = time.perf_counter()
            model = cls(cfg).run(box, ctx).model
            times[key] = time.perf_counter() - start
        out[key] = torch.cat([p.detach().flatten() for p in model.parameters()])
    same = torch.equal(out["plain"], out["ours"])
    print(f"| naivenet victim and student | {times['plain']:.2f} | {times['ours']:.2f} | "
          f"{times['plain'] / times['ours']:.2f} | {same} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["ops", "train", "dfme", "all"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, fn in (("ops", ops), ("train", train), ("dfme", dfme)):
        if args.what in (name, "all"):
            fn()
            print()


if __name__ == "__main__":
    main()
