#!/usr/bin/env bash
# The CCL paper's backprop baseline (issue 16): its learning rate and gradient clip picked from the paper's
# grid (App. 6.1: lr 0.4, 0.2, 0.1, 0.05, 0.02, 0.01; clip 0.5, 1) on validation accuracy, with the rest of
# the recipe (tanh MLP, plain SGD, batch 256, no augmentation). One seed and GRID_EPOCHS epochs per point
# (the paper: 5 seeds, 100 epochs), so it is a short-budget choice; the winner goes into
# presets.RECIPES["ccl_paper"].
# Usage: LOCALEARN_DATA=../shared/data OMP_NUM_THREADS=1 bash benchmarks/ccl_bp_grid.sh mnist|cifar10
set -euo pipefail
dataset=${1:?mnist or cifar10}
out=${OUT:-benchmarks/out/ccl_bp_grid}
for lr in 0.4 0.2 0.1 0.05 0.02 0.01; do
  for clip in 0.5 1; do
    python -m localearn.experiments "$dataset" --algo backprop --recipe ccl_paper --lr $lr --hp clip=$clip \
      --epochs "${GRID_EPOCHS:-5}" --patience 0 --seed 0 --no-energy --no-progress -q --device cpu \
      --out "$out" --name "$dataset-lr$lr-clip$clip"
  done
done
# The point with the best validation accuracy (ties: the smaller learning rate, then the smaller clip).
python - "$out" "$dataset" <<'PY'
import json, pathlib, sys
out, dataset = pathlib.Path(sys.argv[1]), sys.argv[2]
best = max(
    (json.loads((d / "result.json").read_text()) for d in sorted(out.glob(f"{dataset}-lr*-clip*"))),
    key=lambda r: r["best_val_accuracy"],
)
hp = best["hyperparameters"]
print(f"{dataset}: best lr {hp['lr']}, clip {hp['clip']}, validation accuracy {best['best_val_accuracy']:.4f}")
PY
