# Sourced by the device scripts (gpu_session.sh, gpu_paper.sh) from the repository root: a bare
# CUDA machine with PyTorch, no network. Puts Fashion-MNIST where wmbench looks for it (copied from
# $FMNIST, default .devdata/fashion-mnist, carried with the call) and installs this checkout into
# /tmp/wm with $PY (default python3), on PYTHONPATH; $OUT is created for the logs.
OUT=${OUT:-/tmp/gpu-out}
PY=${PY:-python3}
mkdir -p "$OUT" /usr/share/datasets
[ -d /usr/share/datasets/fashion-mnist ] || cp -r "${FMNIST:-.devdata/fashion-mnist}" /usr/share/datasets/fashion-mnist
$PY -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/wm . >/dev/null 2>&1 \
  || { echo "install failed"; exit 1; }
export PYTHONPATH=/tmp/wm PYTHONUNBUFFERED=1
