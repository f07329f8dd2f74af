"""Idle cores: the same grids under Ray with ``--spare-cpus none`` and ``--spare-cpus share``.

Two regimes, each run once per mode into a fresh folder (nothing cached between runs):

- ``chain``: DeepTracer × Knockoff (soft, hard) on Fashion-MNIST — one benign model, one victim,
  the owner's surrogate and key filter, then two cells: a sequence of single tasks for most of
  the run, the case where one core sat idle;
- ``wide``: four victims (BadNets, Content, Noise, Unrelated) × ``none`` after one shared benign
  model — more runnable tasks than cores for most of the run, the case where packing matters.

Prints wall seconds per regime and mode, their ratio, and the largest difference between the two
modes' numbers (accuracy, WSR, fidelity; they may differ in the last digits because CPU kernels
reduce in a different order at another thread count — same thread count, same numbers, which
``tests/test_grid.py`` checks to the bit). Usage::

    python benchmarks/grid_cores.py                     # quick profile, real Fashion-MNIST
    python benchmarks/grid_cores.py --profile smoke --dataset synthetic   # a minute, for a try
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from wmbench.runner import run
from wmbench.spec import GridSpec

REGIMES = {
    "chain": (("deeptracer",), ("knockoff",)),
    "wide": (("badnets", "content", "noise", "unrelated"), ("none",)),
}
COMPARED = ("acc", "wsr", "fidelity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--regimes", default="chain,wide")
    parser.add_argument("--out", default=None, help="folder for the run folders (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="wmbench-cores-"))
    print(f"{len(os.sched_getaffinity(0))} CPUs, profile {args.profile}, dataset {args.dataset}, runs in {root}")
    rows = []
    for regime in args.regimes.split(","):
        methods, attacks = REGIMES[regime]
        frames = {}
        walls = {}
        for mode in ("none", "share"):
            spec = GridSpec(methods=methods, attacks=attacks, datasets=(args.dataset,), profile=args.profile,
                            overrides=tuple(args.overrides), out=str(root / f"{regime}-{mode}"), executor="ray",
                            spare_cpus=mode, progress=False)
            started = time.perf_counter()
            frames[mode] = run(spec)
            walls[mode] = time.perf_counter() - started
            print(f"{regime:6s} spare-cpus={mode:5s} {walls[mode]:8.1f} s", flush=True)
        a, b = (f[f["metric"].isin(COMPARED)].set_index(["cell_id", "stage", "step", "metric"])["value"].sort_index()
                for f in (frames["none"], frames["share"]))
        diff = float((a - b).abs().max()) if len(a) else float("nan")
        rows.append({"regime": regime, "none_s": round(walls["none"], 1), "share_s": round(walls["share"], 1),
                     "speed-up": round(walls["none"] / walls["share"], 3), "max |diff| (points)": round(100 * diff, 2)})
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
