"""Throughput of wmbench's training engine against a bare PyTorch loop, in one process.

Trains NaiveNet on the owner's split of Fashion-MNIST for one epoch through
:func:`wmbench.training.fit` and through a hand-written loop doing the same work (in-memory
tensors, shuffled index batches, Adam, cross-entropy), alternating the two ``--repeats`` times,
and prints images/s of each and their ratio (target: wmbench >= 0.95x the bare loop).

    python benchmarks/train_throughput.py [--repeats 3] [--images 20000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from wmbench.config import TrainConfig
from wmbench.data import load_data
from wmbench.models import build_model
from wmbench.training import fit


def bare_epoch(model, x, y, batch_size: int, seed: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=gen)
    model.train()
    for start in range(0, x.shape[0], batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    data = load_data("fmnist", owner_size=args.images)
    x, y = data.owner.x, data.owner.y
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr_step=0)
    device = torch.device("cpu")

    def new():
        torch.manual_seed(0)
        return build_model("naivenet", in_channels=1, num_classes=10, input_size=28)

    times = {"wmbench": [], "bare": []}
    for r in range(args.repeats):
        for name in ("bare", "wmbench") if r % 2 == 0 else ("wmbench", "bare"):
            model = new()
            started = time.perf_counter()
            if name == "bare":
                bare_epoch(model, x, y, args.batch_size, seed=r)
            else:
                fit(model, (x, y), cfg, device=device, seed=r, progress=False)
            times[name].append(time.perf_counter() - started)
    n = x.shape[0]
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} images, batch {args.batch_size}, "
          f"median of {args.repeats}")
    print(f"bare loop : {rate['bare']:8.0f} images/s")
    print(f"wmbench   : {rate['wmbench']:8.0f} images/s")
    print(f"ratio wmbench/bare: {rate['wmbench'] / rate['bare']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
