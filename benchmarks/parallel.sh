#!/usr/bin/env bash
# Layer-parallel training (issue 18): the same Mono-Forward run on the MNIST 2x1000 preset, EPOCHS epochs,
# three ways on one machine: one process with one thread, one process with two threads, and two stage
# processes (--parallel units --world-size 2) with one thread each. Prints each run's result line, then
# training samples per second (the epochs' seconds, which hold per-epoch validation as every run's do),
# the speed-ups over one thread, and whether the test accuracies are equal (they should be: same maths).
# Usage: LOCALEARN_DATA=../shared/data bash benchmarks/parallel.sh   (EPOCHS 5, OUT benchmarks/out/parallel)
set -euo pipefail
epochs=${EPOCHS:-5}
out=${OUT:-benchmarks/out/parallel}
python=${PYTHON:-python}
rm -rf "$out"
common=(mnist --algo mono_forward --seed 0 --epochs "$epochs" --patience 0 --out "$out" --no-progress --device cpu)
OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name one-thread
OMP_NUM_THREADS=2 "$python" -m localearn.experiments "${common[@]}" --name two-threads
OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name two-stages --parallel units --world-size 2
"$python" - "$out" <<'PY'
import json, sys
from pathlib import Path
runs = {}
for name in ("one-thread", "two-threads", "two-stages"):
    run = Path(sys.argv[1]) / name
    result = json.loads((run / "result.json").read_text())
    seconds = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    samples = json.loads((run / "config.json").read_text())["data"]["train"] * len(seconds)
    runs[name] = (samples / sum(seconds), result["test_accuracy"], result.get("parallel"))
base = runs["one-thread"][0]
print("| run | samples/s | x one thread | test accuracy |")
print("|---|---|---|---|")
for name, (rate, accuracy, _) in runs.items():
    print(f"| {name} | {rate:.0f} | {rate / base:.2f} | {accuracy:.4f} |")
layout = runs["two-stages"][2]
busy = [s["busy_seconds_last_epoch"] for s in layout["stages"]]
print("stages:", "; ".join(f"{','.join(s['units'])} ({s['device']}, {b:.1f} s busy in the last epoch)"
                           for s, b in zip(layout["stages"], busy)))
print(f"ideal speed-up (all stages' busy time over the busiest's): {sum(busy) / max(busy):.2f}")
print("equal test accuracy (one thread, two stages):", runs["one-thread"][1] == runs["two-stages"][1])
PY
