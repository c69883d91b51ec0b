#!/usr/bin/env bash
# Layer-parallel training (issue 18): the same Mono-Forward run on the MNIST 2x1000 preset, EPOCHS epochs,
# three ways on one machine: one process with one thread, one process with two threads, and two stage
# processes (--parallel units --world-size 2) with one thread each; REPEATS times, the three interleaved,
# so that a slow spell of a shared machine falls on all of them. Prints each run's result line, then per
# run: training samples per second (the epochs' seconds, which hold per-epoch validation as every run's
# do) over all epochs, in the median epoch after the first (the first holds the stages' start: the state's
# broadcast, first allocations), and in training alone (the epochs' seconds less their validation, which
# stage 1 runs while the others wait), the speed-ups over the same repeat's one-thread run, the medians
# of those over the repeats, and whether the test accuracies are equal (they should be: same maths).
# Usage: LOCALEARN_DATA=../shared/data bash benchmarks/parallel.sh   (EPOCHS 6, REPEATS 3,
#   OUT benchmarks/out/parallel)
set -euo pipefail
epochs=${EPOCHS:-6}
repeats=${REPEATS:-3}
out=${OUT:-benchmarks/out/parallel}
python=${PYTHON:-python}
rm -rf "$out"
common=(mnist --algo mono_forward --seed 0 --epochs "$epochs" --patience 0 --out "$out" --no-progress --device cpu)
for r in $(seq 1 "$repeats"); do
  OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name "one-thread-$r"
  OMP_NUM_THREADS=2 "$python" -m localearn.experiments "${common[@]}" --name "two-threads-$r"
  OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name "two-stages-$r" --parallel units --world-size 2
done
"$python" - "$out" "$repeats" <<'PY'
import json, statistics, sys
from pathlib import Path
root, repeats = Path(sys.argv[1]), int(sys.argv[2])

def measure(name):
    """Samples per second: over all epochs; in the median epoch after the first; and in training alone
    (the epochs' seconds less their validation), over all epochs."""
    run = root / name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records]
    training = sum(r["seconds"] - r["val_seconds"] for r in records)
    per_epoch = json.loads((run / "config.json").read_text())["data"]["train"]
    result = json.loads((run / "result.json").read_text())
    rates = (per_epoch * len(seconds) / sum(seconds), per_epoch / statistics.median(seconds[1:]),
             per_epoch * len(seconds) / training)
    return rates, result

COLUMNS = ("all epochs", "median epoch after the first", "training alone (no validation)")
print("| run | " + " | ".join(f"samples/s, {c} | x one thread" for c in COLUMNS) + " | test accuracy |")
print("|---|" + "---|---|" * len(COLUMNS) + "---|")
ratios, equal = {}, []
for r in range(1, repeats + 1):
    base, base_result = measure(f"one-thread-{r}")
    for kind in ("one-thread", "two-threads", "two-stages"):
        rates, result = measure(f"{kind}-{r}")
        ratios.setdefault(kind, []).append([rate / b for rate, b in zip(rates, base)])
        cells = " | ".join(f"{rate:.0f} | {rate / b:.2f}" for rate, b in zip(rates, base))
        print(f"| {kind}-{r} | {cells} | {result['test_accuracy']:.4f} |")
    equal.append(result["test_accuracy"] == base_result["test_accuracy"])
    layout = result["parallel"]
for kind, rows in ratios.items():
    medians = [statistics.median(column) for column in zip(*rows)]
    print(f"{kind}: median speed-up over {repeats} repeats: "
          + ", ".join(f"{c} {m:.2f}" for c, m in zip(COLUMNS, medians)))
busy = [s["busy_seconds_last_epoch"] for s in layout["stages"]]
print("stages (last repeat):", "; ".join(f"{','.join(s['units'])} ({s['device']}, {b:.1f} s busy, "
      f"{s['waiting_seconds_last_epoch']:.1f} s waiting in the last epoch)" for s, b in zip(layout["stages"], busy)))
print(f"ideal speed-up (all stages' busy time over the busiest's): {sum(busy) / max(busy):.2f}")
print("equal test accuracy (one thread, two stages), each repeat:", equal)
PY
