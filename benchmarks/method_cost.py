"""Cost of one training step of the watermark objectives against a plain training step.

For EWE, Margin-based, MEA-Defender and T2S (reimpl.), runs ``--steps`` optimiser steps of the
method's own loss hook and batch source through :func:`wmbench.training.fit` and the same number
of plain cross-entropy steps (same model, NaiveNet on Fashion-MNIST, same batch size), in one
process, alternating the order over ``--repeats`` rounds, and prints the median seconds per step
and the ratio to the plain step. The watermark data are stand-ins of the right shape (the cost of
a step does not depend on what the triggers look like); key generation and pre-training are not
timed.

    python benchmarks/method_cost.py [--steps 40] [--repeats 3] [--batch-size 128] [--only ewe,t2s]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable, Dict, Iterator, List, Tuple

import torch

from wmbench.api import Context
from wmbench.cache import ArtifactStore
from wmbench.config import TrainConfig, VerifyConfig, resolve
from wmbench.data import load_data
from wmbench.methods.ewe import EWEConfig, EWEObjective, ewe_batches, resolve_layers
from wmbench.methods.margin import MarginConfig, margin_batches, margin_loss_fn
from wmbench.methods.mea_defender import MEADefenderConfig, MEAObjective, composites, mea_batches
from wmbench.methods.t2s import Rehearsal, T2SConfig, rehearsal_batches
from wmbench.training import BatchSource, cross_entropy, fit, tensor_batches

Variant = Tuple[str, Callable[[Context], Tuple[BatchSource, Callable, Callable]]]


def limited(source: BatchSource, steps: int) -> BatchSource:
    """The first ``steps`` batches of ``source`` (over as many of its epochs as needed)."""

    def batches(epoch: int, gen: torch.Generator) -> Iterator:
        count, inner = 0, 0
        while count < steps:
            for batch in source(inner, gen):
                if count >= steps:
                    return
                yield batch
                count += 1
            inner += 1

    return batches


def variants(ctx: Context) -> List[Variant]:
    owner = ctx.data.owner
    x, y, bs = owner.x, owner.y, ctx.train.batch_size
    gen = torch.Generator().manual_seed(0)
    out: List[Variant] = []

    def plain(c: Context):
        return tensor_batches(x, y, batch_size=bs), cross_entropy, None
    out.append(("plain", plain))

    def ewe(ratio: float):
        def build(c: Context):
            cfg = EWEConfig(ratio=ratio)
            model = c._bench_model
            objective = EWEObjective(model, cfg, resolve_layers(model, (), 3), c.device)
            targets = x[y == cfg.target]
            return (ewe_batches(x, y, x[:2000], targets, target=cfg.target, batch_size=bs, ratio=ratio),
                    objective.loss, objective.on_step_end)
        return build
    out.append(("ewe (ratio 2: 2 clean + 1 WM step)", ewe(2.0)))
    out.append(("ewe WM step only", ewe(0.0)))

    def margin(c: Context):
        cfg = MarginConfig()
        q, r = x[:cfg.n_queries], (y[:cfg.n_queries] + 1) % 10
        return margin_batches(x, y, q, r, batch_size=bs, wm_batch=cfg.wm_batch), margin_loss_fn(cfg), None
    out.append(("margin", margin))

    def mea(phase: int, **overrides):
        def build(c: Context):
            cfg = dataclasses.replace(MEADefenderConfig(), **overrides)
            xa, xb = x[y == cfg.class_a], x[y == cfg.class_b]
            size = cfg.pool_size_phase1 if phase == 1 else cfg.pool_size_phase2
            pools = (xa[:size], xb[:size], composites(xa, xb, size, cfg.mixer, gen, cfg.jitter))
            objective = MEAObjective(cfg, *pools, device=c.device)
            return (mea_batches(x, y, xa, xb, cfg, phase=phase, batch_size=bs,
                                pool_sizes=tuple(p.shape[0] for p in pools)), objective.loss, None)
        return build
    out.append(("mea_defender phase 1, MGDA, full pools of 600 (official design)", mea(1)))
    out.append(("mea_defender phase 1, MGDA, kl_batch 128 (quick profile)", mea(1, kl_batch=128)))
    out.append(("mea_defender phase 1, fixed weighting, full pools", mea(1, weighting="fixed")))

    def t2s(mode: str, **overrides):
        def build(c: Context):
            cfg = dataclasses.replace(T2SConfig(), mode=mode, warmup_steps=0, reset_every=0, **overrides)
            objective = Rehearsal(c, cfg)
            return (rehearsal_batches(x, y, x[:500], torch.ones(500, dtype=torch.long), batch_size=bs,
                                      wm_batch=cfg.wm_batch, query_batch=cfg.query_batch),
                    objective.loss, objective.on_step_end)
        return build
    out.append(("t2s unrolled (k=1)", t2s("unrolled")))
    out.append(("t2s unrolled (k=3)", t2s("unrolled", inner_steps=3)))
    out.append(("t2s alternating (first order)", t2s("alternating")))
    out.append(("t2s rehearsal_weight=0 (fine-tune only)", t2s("unrolled", rehearsal_weight=0.0)))
    return out


def time_variant(ctx: Context, build, steps: int, warmup: int, seed: int) -> float:
    model = ctx.new_model(seed=seed)
    ctx._bench_model = model  # type: ignore[attr-defined]
    source, loss_fn, on_step_end = build(ctx)
    cfg = dataclasses.replace(ctx.train, epochs=1, lr_step=0)
    fit(model, limited(source, warmup), cfg, loss_fn=loss_fn, device=ctx.device, seed=seed, progress=False,
        on_step_end=on_step_end)
    started = time.perf_counter()
    fit(model, limited(source, steps), cfg, loss_fn=loss_fn, device=ctx.device, seed=seed + 1, progress=False,
        on_step_end=on_step_end)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--only", default="", help="comma-separated name prefixes to run (plain always runs)")
    args = parser.parse_args()
    data = load_data("fmnist", owner_size=args.images, attacker_size=1000, test_size=1000)
    train = resolve(TrainConfig, "quick", {"batch_size": args.batch_size})
    ctx = Context(data=data, arch="naivenet", train=train, verify=VerifyConfig(), seed=0,
                  device=torch.device("cpu"), store=ArtifactStore("/tmp/wmbench-bench-store"), profile="quick",
                  progress=False)
    chosen = [v for v in variants(ctx) if v[0] == "plain" or not args.only
              or any(v[0].startswith(p) for p in args.only.split(","))]
    times: Dict[str, List[float]] = {name: [] for name, _ in chosen}
    for r in range(args.repeats):
        order = chosen if r % 2 == 0 else list(reversed(chosen))
        for name, build in order:
            times[name].append(time_variant(ctx, build, args.steps, args.warmup, seed=r))
    plain = statistics.median(times["plain"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, NaiveNet/Fashion-MNIST, batch "
          f"{args.batch_size}, {args.steps} steps, median of {args.repeats}")
    print(f"| variant | s/step | × plain |\n|---|---|---|")
    for name, _ in chosen:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.4f} | {t / plain:.2f} |")


if __name__ == "__main__":
    main()
