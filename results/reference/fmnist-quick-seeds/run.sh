#!/usr/bin/env bash
# The reference run behind this folder: real Fashion-MNIST, `quick` profile, 3 seeds, 2-core CPU.
# DeepTracer, BadNets, Content and EWE under Knockoff, JBDA, DFME and distillation (soft and hard
# where they exist), and 10 null models per seed-0 victim for calibrated false positives.
# Every attack's settings are its `quick` defaults, fixed before any watermark result was seen.
# Resumable: rerun the script and finished cells are reused (results/fmnist-quick-seeds is the run
# folder, git-ignored; this folder gets the report and the long table).
set -euo pipefail
cd "$(dirname "$0")/../../.."
WMBENCH=${WMBENCH:-.venv/bin/wmbench}
RUN=results/fmnist-quick-seeds
GRID=(--methods deeptracer,badnets,content,ewe --datasets fmnist --profile quick --out "$RUN" --no-progress)
# one whole seed first, then the null models, then the other two seeds
"$WMBENCH" run "${GRID[@]}" --attacks none,knockoff,jbda,dfme,distill --seeds 0
"$WMBENCH" calibrate "${GRID[@]}" --seeds 0 --null-models 10
# the data-free DFME cells cost more than half the compute: run them last so that a cut run has the
# other attacks at every seed first
"$WMBENCH" run "${GRID[@]}" --attacks none,knockoff,jbda,distill --seeds 0,1,2
"$WMBENCH" run "${GRID[@]}" --attacks none,knockoff,jbda,dfme,distill --seeds 0,1,2
"$WMBENCH" report "$RUN" --compare paper
cp "$RUN"/report.md "$RUN"/report.tex "$RUN"/results.csv "$RUN"/table*.csv results/reference/fmnist-quick-seeds/
cp "$RUN"/verdicts.csv "$RUN"/calibration.csv "$RUN"/curves.csv results/reference/fmnist-quick-seeds/ 2>/dev/null || true
rm -rf results/reference/fmnist-quick-seeds/figures && cp -r "$RUN"/figures results/reference/fmnist-quick-seeds/
