#!/usr/bin/env bash
# Layer-parallel training (issue 18): the same Mono-Forward run on the MNIST 2x1000 preset, EPOCHS epochs,
# several ways on one machine, by default three: one process with one thread (one-thread), one process
# with two threads (two-threads), and two stage processes (--parallel units --world-size 2) with one
# thread each (two-stages, at most 2 batches in flight between them, the default); two-stages-ifN is the
# same with --in-flight N, and wavefront is --parallel wavefront (one process, a CUDA stream per stage).
# REPEATS times, the runs interleaved, so that a slow spell of a shared machine falls on all of them. The first of RUNS is the baseline of the speed-ups. Prints each run's result line, then per
# run: training samples per second (the epochs' seconds, which hold per-epoch validation as every run's
# do) over all epochs, in the median epoch after the first (the first holds the stages' start: the state's
# broadcast, first allocations), and in training alone (the epochs' seconds less their validation, which
# stage 1 runs while the others wait), the speed-ups over the same repeat's one-thread run, the medians
# of those over the repeats, and whether the test accuracies are equal (they should be: same maths).
# Usage: LOCALEARN_DATA=../shared/data bash benchmarks/parallel.sh   (EPOCHS 6, REPEATS 3,
#   OUT benchmarks/out/parallel, DEVICE cpu, RUNS "one-thread two-threads two-stages two-stages-if8")
# On one GPU: DEVICE=cuda RUNS="one-thread wavefront two-stages" (two-stages: both processes on the GPU,
#   gloo between them through the host).
set -euo pipefail
epochs=${EPOCHS:-6}
repeats=${REPEATS:-3}
out=${OUT:-benchmarks/out/parallel}
python=${PYTHON:-python}
device=${DEVICE:-cpu}
read -r -a runs <<< "${RUNS:-one-thread two-threads two-stages two-stages-if8}"
rm -rf "$out"
common=(mnist --algo mono_forward --seed 0 --epochs "$epochs" --patience 0 --out "$out" --no-progress --device "$device")
for r in $(seq 1 "$repeats"); do
  for kind in "${runs[@]}"; do
    case $kind in
      one-thread) OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name "$kind-$r" ;;
      two-threads) OMP_NUM_THREADS=2 "$python" -m localearn.experiments "${common[@]}" --name "$kind-$r" ;;
      two-stages) OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name "$kind-$r" \
        --parallel units --world-size 2 ;;
      two-stages-if*) OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name "$kind-$r" \
        --parallel units --world-size 2 --in-flight "${kind#two-stages-if}" ;;
      wavefront) OMP_NUM_THREADS=1 "$python" -m localearn.experiments "${common[@]}" --name "$kind-$r" \
        --parallel wavefront ;;
      *) echo "unknown run $kind: one-thread, two-threads, two-stages, two-stages-ifN or wavefront" >&2; exit 2 ;;
    esac
  done
done
"$python" - "$out" "$repeats" "${runs[@]}" <<'PY'
import json, statistics, sys
from pathlib import Path
root, repeats, kinds = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

def measure(name):
    """Samples per second: over all epochs; in the median epoch after the first; and in training alone
    (the epochs' seconds less their validation), over all epochs."""
    run = root / name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records]
    training = sum(r["seconds"] - r["val_seconds"] for r in records)
    per_epoch = json.loads((run / "config.json").read_text())["data"]["train"]
    result = json.loads((run / "result.json").read_text())
    rates = (per_epoch * len(seconds) / sum(seconds), per_epoch / statistics.median(seconds[1:] or seconds),
             per_epoch * len(seconds) / training)
    return rates, result

COLUMNS = ("all epochs", "median epoch after the first", "training alone (no validation)")
print("| run | " + " | ".join(f"samples/s, {c} | x {kinds[0]}" for c in COLUMNS) + " | test accuracy |")
print("|---|" + "---|---|" * len(COLUMNS) + "---|")
ratios, equal, layouts = {}, [], {}
for r in range(1, repeats + 1):
    base, base_result = measure(f"{kinds[0]}-{r}")
    for kind in kinds:
        rates, result = measure(f"{kind}-{r}")
        ratios.setdefault(kind, []).append([rate / b for rate, b in zip(rates, base)])
        cells = " | ".join(f"{rate:.0f} | {rate / b:.2f}" for rate, b in zip(rates, base))
        print(f"| {kind}-{r} | {cells} | {result['test_accuracy']:.4f} |")
        if kind != kinds[0] and "parallel" in result:
            equal.append(result["test_accuracy"] == base_result["test_accuracy"])
        if kind.startswith("two-stages"):
            layouts[kind] = result["parallel"]
for kind, rows in ratios.items():
    medians = [statistics.median(column) for column in zip(*rows)]
    print(f"{kind}: median speed-up over {repeats} repeats: "
          + ", ".join(f"{c} {m:.2f}" for c, m in zip(COLUMNS, medians)))
for kind, layout in layouts.items():
    busy = [s["busy_seconds_last_epoch"] for s in layout["stages"]]
    print(f"{kind} (last repeat):", "; ".join(f"{','.join(s['units'])} ({s['device']}, {b:.1f} s busy, "
          f"{s['waiting_seconds_last_epoch']:.1f} s waiting in the last epoch)" for s, b in zip(layout["stages"], busy)))
    print(f"{kind}: ideal speed-up (all stages' busy time over the busiest's): {sum(busy) / max(busy):.2f}")
print(f"equal test accuracy ({kinds[0]} against each parallel run):", equal)
PY
