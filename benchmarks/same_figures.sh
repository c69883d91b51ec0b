#!/usr/bin/env bash
# Every rule on MNIST for 2 epochs (presets otherwise), to check that a refactor changes no figure:
# run it on the code before and after, and compare the printed lines (and each result.json).
# Usage: LOCALEARN_DATA=../shared/data bash benchmarks/same_figures.sh [SRC_DIR] [OUT_DIR]
#   SRC_DIR: the checkout to import localearn from (default: this one), e.g. a `git worktree` of the
#   commit before. One thread per run, two runs at a time, so the figures do not depend on the load.
set -euo pipefail
src=$(cd "${1:-$(dirname "$0")/..}" && pwd)
out=${2:-benchmarks/out/same_figures}
mkdir -p "$out" && out=$(cd "$out" && pwd)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export LOCALEARN_DATA=$(cd "${LOCALEARN_DATA:-data}" && pwd)  # absolute: the next line changes directory
cd "$src"  # python -m puts the working directory first on the path: this is the code that runs
run() { local name=$1; shift; python -m localearn.experiments mnist "$@" --epochs 2 --no-energy --no-progress -q \
  --out "$out" --name "$name" > "$out/$name.log" 2>&1; }
run mf --algo mono_forward & run dfa --algo dfa & wait
run ccl --algo counter_current & run bp --algo backprop & wait
run ff --algo forward_forward & run fgw --algo forward_gradient & wait
run fga --algo forward_gradient --hp variant=local_activity & run mfseq --algo mono_forward --hp schedule=sequential & wait
for name in mf mfseq dfa ccl bp fgw fga ff; do
  python - "$out/$name/result.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<6} {r['algorithm']:<16} {r['model']:<34} test accuracy {r['test_accuracy']!r:<7} "
      f"test loss {r['test_loss']!r}")
PY
done
