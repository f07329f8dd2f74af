#!/usr/bin/env bash
# One accelerator session, prepared ahead: every GPU figure of BENCHMARKS.md in one command of
# about 8 minutes at most on a bare CUDA machine with PyTorch (no Ray, no network).
#   1. benchmarks/gpu.py: training throughput vs a bare loop, DFME queries/s, switches on/off;
#   2. the same with torch.compile rows;
#   3. a `smoke` grid on CUDA through the CLI (serial executor): every method with no attack, and
#      DeepTracer and BadNets under every attack, every method under Knockoff, so that no code path mixes host and device tensors;
#   4. the `quick` DeepTracer × Knockoff chain on CUDA (the chain timed on CPU in BENCHMARKS.md).
# Fashion-MNIST (benchmarks/_device_setup.sh) is read from $FMNIST (default .devdata/fashion-mnist, copied there from
# /usr/share/datasets/fashion-mnist before the call). Logs and tables go to ${OUT:-/tmp/gpu-out}.
# To check the plumbing on a CPU machine: PY=.venv/bin/python DEVICE=cpu TSCALE=10 benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_device_setup.sh
DEVICE=${DEVICE:-cuda}
t() { echo $(( $1 * ${TSCALE:-100} / 100 )); }  # a section's time limit, scaled
SECTIONS=${SECTIONS:-1 2 3 4}  # a rerun may take fewer
on() { [[ " $SECTIONS " == *" $1 "* ]]; }
WM="$PY /tmp/wm/bin/wmbench"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"

if on 1; then echo "== 1. gpu.py all"
timeout $(t 140) $PY benchmarks/gpu.py all --device $DEVICE --repeats 3 2>&1 | tee "$OUT/gpu_bench.md"; fi
if on 2; then echo "== 2. gpu.py throughput --compile"
timeout $(t 70) $PY benchmarks/gpu.py throughput --device $DEVICE --repeats 2 --compile 2>&1 | grep -v "^W1\|^  " | tee "$OUT/gpu_compile.md"; fi

if on 3; then echo "== 3. smoke grid on CUDA"
start=$(date +%s)
timeout $(t 100) $WM run --methods all --attacks none --datasets fmnist --profile smoke --executor serial \
  --device $DEVICE --out /tmp/smoke --no-progress > "$OUT/smoke.log" 2>&1
timeout $(t 80) $WM run --methods deeptracer,badnets --attacks all --datasets fmnist --profile smoke \
  --executor serial --device $DEVICE --out /tmp/smoke --no-progress >> "$OUT/smoke.log" 2>&1
timeout $(t 60) $WM run --methods all --attacks knockoff --datasets fmnist --profile smoke \
  --executor serial --device $DEVICE --out /tmp/smoke --no-progress >> "$OUT/smoke.log" 2>&1
echo "smoke wall $(( $(date +%s) - start )) s"
echo "cells ok: $(grep -cE '^\[ok' "$OUT/smoke.log"), failed: $(grep -cE '^\[failed' "$OUT/smoke.log")"
grep -E "^\[failed" "$OUT/smoke.log" | head -20
$PY - <<'EOF' 2>&1 | tee "$OUT/smoke_failures.txt"
import json, pathlib
for p in sorted(pathlib.Path("/tmp/smoke/cells").glob("*.json")):
    r = json.loads(p.read_text())
    if r["status"] == "failed":
        c = r["cell"]
        print(c["method"], c["attack"], c.get("labels"), "::", (r.get("traceback") or r.get("error", ""))[-900:])
EOF
fi

if on 4; then echo "== 4. quick DeepTracer x Knockoff chain on CUDA"
start=$(date +%s)
timeout $(t 90) $WM run --methods deeptracer --attacks knockoff --datasets fmnist --profile quick \
  --executor serial --device $DEVICE --out /tmp/quick --no-progress > "$OUT/quick.log" 2>&1
rc=$?
echo "quick chain wall $(( $(date +%s) - start )) s (rc $rc)"
tail -15 "$OUT/quick.log"
$PY - <<'EOF' 2>&1 | tee "$OUT/quick_cells.txt"
import json, pathlib
for p in sorted(pathlib.Path("/tmp/quick/cells").glob("*.json")):
    r = json.loads(p.read_text())
    m = r.get("metrics", {})
    c = r["cell"]
    print(c["method"], c["attack"], c.get("labels"), r["status"], round(r.get("wall_s", 0), 1), "s",
          {k: {kk: round(vv, 4) for kk, vv in v.items() if kk in ("acc", "wsr", "fidelity")}
           for k, v in m.items() if isinstance(v, dict)})
EOF
fi
