#!/usr/bin/env bash
# The `paper` profile on one lent GPU, as far as a short lease goes: Fashion-MNIST, seed 0,
# DeepTracer and BadNets (and Content) victims at the paper's 100 + 100 epochs, stolen by Knockoff
# (soft and hard, on the attacker split) at its paper settings. One `wmbench run` process per
# (method, label access) on the same run folder — the shared benign model and each victim are built
# once (file locks), the GPU is shared (these small networks are bound by per-step overhead, not by
# the GPU). Every process stops at $LIMIT seconds; what finished is in the run folder, which is
# packed (records, logs, tables, artifact metadata — no weights) into $OUT/paper-run.tgz.
# Fashion-MNIST's idx files are read from .devdata/fashion-mnist (see benchmarks/gpu_session.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_device_setup.sh
LIMIT=${LIMIT:-300}
RUN=/tmp/paper-run
export OMP_NUM_THREADS=2  # six processes share 16 cores
start=$(date +%s)
for job in deeptracer:soft deeptracer:hard badnets:soft badnets:hard content:soft content:hard; do
  method=${job%%:*}; labels=${job##*:}
  timeout "$LIMIT" $PY /tmp/wm/bin/wmbench run --methods "$method" --attacks none,knockoff --datasets fmnist \
    --profile paper --set "attacks.knockoff.labels=$labels" --executor serial --device cuda --out "$RUN" \
    --no-progress > "$OUT/$method-$labels.log" 2>&1 &
done
wait
echo "paper run wall $(( $(date +%s) - start )) s"
grep -h "^\[ok\]\|^\[failed\]" "$OUT"/*.log | sort | uniq
$PY /tmp/wm/bin/wmbench report "$RUN" > /dev/null 2>&1 || true
(cd "$RUN" && tar czf "$OUT/paper-run.tgz" --exclude='*.pt' --exclude='*.pth' --exclude='*.safetensors' \
  --exclude='*.npz' --exclude='*.bin' .)
ls -la "$OUT"
