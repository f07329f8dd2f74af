"""Memory of a query pool held in memory against the same pool streamed from a uint8 shard.

Generates an ImageFolder tree of ``--images`` RGB PNGs (32×32, 10 classes) once, then, each in a
fresh subprocess, loads it as a query pool (:func:`wmbench.data.training_pool`, ``stream=never``
and ``stream=always``; the shard is written by a first, untimed run) and reads every image once
in batches of 256 in a random order, as Knockoff's querying does. Prints the peak resident memory
above the interpreter's baseline (VmHWM, reset through /proc/self/clear_refs; it counts the
shard's file pages, which the kernel can drop at any time, shown beside it) and the wall time
of the load and of the pass, and checks that both paths returned the same pixels (a checksum).

    python benchmarks/streaming.py [--images 20000] [--tree /tmp/wmbench-stream-tree]

Timings and memory are measured in one run; never asserted in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _proc import status  # benchmarks/ is the script's folder



def make_tree(root: str, images: int) -> None:
    import numpy as np
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = os.path.join(root, "train", f"c{i % 10}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i:06d}.png"))
    open(done, "w").close()


def child(tree: str, stream: str) -> None:
    import torch

    from wmbench.data import training_pool

    torch.set_num_threads(1)
    torch.zeros(1).sum()  # torch's own first-use pages, before the baseline
    base, base_file = status("VmRSS"), status("RssFile")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    started = time.perf_counter()
    pool = training_pool("imagefolder", root=tree, options={"size": 32, "stream": stream})
    loaded = time.perf_counter() - started
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    checksum = 0.0
    started = time.perf_counter()
    for start in range(0, len(order), 256):
        checksum += float(pool.x[order[start:start + 256]].sum())
    passed = time.perf_counter() - started
    print(json.dumps({"stream": stream, "images": len(pool), "peak_mb": (status("VmHWM") - base) / 2**20,
                      "file_mb": (status("RssFile") - base_file) / 2**20,
                      "load_s": loaded, "pass_s": passed, "checksum": round(checksum, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--tree", default="/tmp/wmbench-stream-tree")
    parser.add_argument("--child", choices=("never", "always"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.tree, args.child)
        return
    make_tree(args.tree, args.images)

    def measure(stream: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--tree", args.tree, "--child", stream],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    measure("always")  # writes the shard once (decoding is not what is compared)
    rows = [measure("never"), measure("always")]
    print(f"pool: {rows[0]['images']} RGB images of 32x32 "
          f"({rows[0]['images'] * 3 * 32 * 32 * 4 / 2**20:.0f} MB as float32, "
          f"{rows[0]['images'] * 3 * 32 * 32 / 2**20:.0f} MB as uint8)\n")
    print("| pool | peak memory above baseline (MB) | file pages mapped since the baseline, at the end (MB) | load (s) "
          "| one pass, batches of 256 (s) | checksum |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        label = "in memory (`stream=never`)" if r["stream"] == "never" else "uint8 shard (`stream=always`)"
        print(f"| {label} | {r['peak_mb']:.0f} | {r['file_mb']:.0f} | {r['load_s']:.2f} | {r['pass_s']:.2f} | {r['checksum']} |")


if __name__ == "__main__":
    main()
