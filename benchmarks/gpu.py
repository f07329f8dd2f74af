"""The GPU path, measured: training throughput against a bare PyTorch loop, DFME queries per second,
and whether the engine's switches keep the numbers. One script, one table, a few minutes.

Sections (each prints Markdown rows; results go to BENCHMARKS.md):

``throughput``  images per second of one training epoch, NaiveNet on Fashion-MNIST (the owner's
                40,000 images, batch 128) and the VGG-like CW net on CIFAR-10-shaped data (50,000
                random 32×32×3 images, batch 128; throughput does not depend on pixel values, so no
                CIFAR files are needed), Adam, cross-entropy, fp32 and bf16 autocast:
                - ``bare``: a hand-written loop written here — data resident on the device as float32,
                  a device-side shuffle, ``model(x[idx])``, no wmbench code;
                - ``wmbench (host batches)``: :func:`wmbench.training.fit` with the engine's switches
                  off (``resident=False, channels_last=False``: the path before the engine existed,
                  one host gather and copy per batch);
                - ``wmbench``: :func:`fit` with the default :class:`~wmbench.training.Engine`;
                - ``wmbench compile`` (``--compile``): the same with ``torch.compile``.
                Each the median of ``--repeats`` epochs after one warm-up epoch (``fit``'s own per-epoch
                times, which end with the epoch's loss read back, so CUDA is synchronised); the ratio is wmbench / bare (target >= 0.9). The VGG-like epoch time per 50k images
                is the figure to set beside airbench's (94 % on CIFAR-10 in about 3.5 s on an A100,
                i.e. ~0.35 s per epoch of a smaller, specially tuned ResNet-like net).
``dfme``        DFME queries per second at the ``quick`` generator (ngf 16, batch 128, m 1, d_iter 5),
                soft and hard labels, a NaiveNet victim on the device.
``same``        the numbers: one Fashion-MNIST model (NaiveNet, 3 epochs, seed 0) trained with the
                switches off and on, on the device; max |Δ weight|, Δ final loss and Δ test accuracy
                (CUDA float rounding differs between kernels, so within tolerance, not identical).

    python benchmarks/gpu.py [throughput|dfme|same|all] [--device cuda] [--repeats 3] [--compile] [--images N]

Runs on CPU too (``--device cpu``, slowly; for checking the script). Timings are ratios within one
process; never asserted in tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from wmbench.config import TrainConfig, resolve
from wmbench.data import load_data
from wmbench.models import build_model
from wmbench.training import Engine, accuracy, fit, use_engine

HOST_BATCHES = Engine(resident=False, channels_last=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_epoch(model, x, y, *, batch_size: int, amp: bool, device: torch.device, opt) -> None:
    """One epoch of the plain loop: resident float32 data, device shuffle, no wmbench code (bf16
    autocast on CUDA only, as ``TrainConfig.amp``)."""
    model.train()
    order = torch.randperm(x.shape[0], device=device)
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _timed(run: Callable[[], None], device: torch.device, repeats: int) -> float:
    run()  # warm-up: cuDNN autotuning, allocator
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _fit_epoch_s(model, x, y, cfg: TrainConfig, device: torch.device, repeats: int) -> float:
    """Median epoch time of one ``fit`` call of ``repeats + 1`` epochs, the first left out (it
    moves the data to the device, autotunes and compiles once, as a cell's training phase does)."""
    history = fit(model, (x, y), dataclasses.replace(cfg, epochs=repeats + 1), device=device, progress=False)
    return statistics.median(h["epoch_s"] for h in history[1:])


def _model(arch: str, shape, device: torch.device):
    torch.manual_seed(0)
    c, s, _ = shape
    return build_model(arch, in_channels=c, num_classes=10, input_size=s).to(device)


def _workloads(images: int):
    fm = load_data("fmnist", owner_size=min(images, 40_000))
    yield "NaiveNet / Fashion-MNIST", "naivenet", fm.owner.x, fm.owner.y
    g = torch.Generator().manual_seed(0)
    n = min(images, 50_000)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).float() / 255
    yield "CW VGG-like / CIFAR-10 shape", "cwnet", x, torch.randint(0, 10, (n,), generator=g)


def throughput(device: torch.device, repeats: int, with_compile: bool, images: int) -> None:
    print("| model / data | precision | loop | s / epoch | images/s | ratio to bare |")
    print("|---|---|---|---|---|---|")
    for label, arch, x, y in _workloads(images):
        n = x.shape[0]
        for amp in (False, True):
            cfg = TrainConfig(epochs=1, batch_size=128, lr_step=0, amp=amp)
            rows: Dict[str, float] = {}
            model = _model(arch, x.shape[1:], device)
            xd, yd = x.to(device), y.to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            rows["bare"] = _timed(lambda: bare_epoch(model, xd, yd, batch_size=128, amp=amp, device=device, opt=opt),
                                  device, repeats)
            del xd, yd
            engines = [("wmbench (host batches)", HOST_BATCHES), ("wmbench", Engine())]
            if with_compile:
                engines.append(("wmbench compile", Engine(compile=True)))
            for name, engine in engines:
                model = _model(arch, x.shape[1:], device)
                with use_engine(engine):
                    rows[name] = _fit_epoch_s(model, x, y, cfg, device, repeats)
            for name, secs in rows.items():
                print(f"| {label} | {'bf16' if amp else 'fp32'} | {name} | {secs:.3f} | {n / secs:,.0f} "
                      f"| {rows['bare'] / secs:.3f} |", flush=True)


def dfme(device: torch.device, iterations: int = 20) -> None:
    from wmbench.api import AttackContext
    from wmbench.blackbox import Blackbox
    from wmbench.cache import ArtifactStore
    from wmbench.config import VerifyConfig
    from wmbench.data import Split
    from wmbench.registry import ATTACKS

    data = load_data("fmnist", attacker_size=100, owner_size=100, test_size=100)
    empty = Split(data.test.x[:0], data.test.y[:0])
    view = dataclasses.replace(data, owner=empty, test=empty)
    print("| DFME (quick: ngf 16, B 128, m 1, d_iter 5) | labels | iterations | queries | s/iter | queries/s |")
    print("|---|---|---|---|---|---|")
    cls = ATTACKS.get("dfme")
    for labels in ("soft", "hard"):
        cost = resolve(cls.Config, "quick", {"labels": labels}).cost_per_iteration
        cfg = resolve(cls.Config, "quick", {"labels": labels, "budget": cost * iterations, "snapshots": 0})
        victim = _model("naivenet", data.shape, device).eval()
        box = Blackbox(victim, num_classes=10, input_shape=data.shape, device=device,
                       mode="labels" if labels == "hard" else "probs")
        ctx = AttackContext(data=view, arch="naivenet", train=TrainConfig(), verify=VerifyConfig(), seed=0,
                            device=device, store=ArtifactStore("/tmp/wmbench-bench-unused"), profile="quick",
                            progress=False, victim_arch="naivenet")
        started = time.perf_counter()
        outcome = cls(cfg).run(box, ctx)
        _sync(device)
        wall = time.perf_counter() - started
        print(f"| naivenet student on {device.type} | {labels} | {iterations} | {outcome.queries} "
              f"| {wall / iterations:.3f} | {outcome.queries / wall:,.0f} |", flush=True)


def same(device: torch.device) -> None:
    data = load_data("fmnist")
    cfg = TrainConfig(epochs=3, batch_size=128, lr_step=0)
    results: List = []
    for engine in (HOST_BATCHES, Engine()):
        model = _model("naivenet", data.shape, device)
        with use_engine(engine):
            history = fit(model, (data.owner.x, data.owner.y), cfg, device=device, seed=0, progress=False)
            acc = accuracy(model, data.test.x, data.test.y, device=device)
        results.append((model.state_dict(), history[-1]["loss"], acc))
    (wa, la, aa), (wb, lb, ab) = results
    dw = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    print("| check | switches off | switches on | difference |")
    print("|---|---|---|---|")
    print(f"| NaiveNet/FMNIST 3 epochs, final loss | {la:.6f} | {lb:.6f} | {abs(la - lb):.2e} |")
    print(f"| test accuracy | {aa:.4f} | {ab:.4f} | {abs(aa - ab):.4f} |")
    print(f"| max abs weight difference | | | {dw:.2e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=("throughput", "dfme", "same", "all"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row per workload")
    parser.add_argument("--images", type=int, default=50_000, help="cap on each workload's images (default: all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}; {torch.get_num_threads()} CPU threads\n", flush=True)
    if args.what in ("same", "all"):
        same(device)
        print()
    if args.what in ("throughput", "all"):
        throughput(device, args.repeats, args.compile, args.images)
        print()
    if args.what in ("dfme", "all"):
        dfme(device)


if __name__ == "__main__":
    main()
