#!/usr/bin/env bash
# On a GPU (issue 15): what only a GPU can show, in one call of at most about 6 minutes per dataset.
#
#   mnist:   the tests that need a GPU; the NVML counter beside NVML power sampling (idle power first,
#            average power against the limit); throughput and step memory of every rule
#            (benchmarks/throughput.py); Mono-Forward against backprop on MNIST (2x1000) to convergence,
#            two seeds each, through `compare`; then (issue 18) layer-parallel Mono-Forward on the one GPU:
#            one process, the wavefront on CUDA streams, and two stage processes sharing the GPU
#            (benchmarks/parallel.sh, 3 epochs, 2 repeats).
#   cifar10: Mono-Forward against backprop on the 3x2000 MLP with crop+flip, to convergence, two seeds each.
#
# Prepare here (once per dataset; each call carries one dataset, the wheels fit beside MNIST only):
#   ../shared/tools/pack-gpu-data.sh mnist      # -> .gpu-mnist (about 11 MB)
#   ../shared/tools/pack-gpu-data.sh cifar10    # -> .gpu-cifar10 (about 60 MiB)
#   .whl: codecarbon and rapidfuzz, the only packages the training path needs that the GPU machine lacks:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl codecarbon==3.3.2 rapidfuzz==3.14.6
# There:   bash benchmarks/gpu.sh mnist     (carry .gpu-mnist and .whl)
#          bash benchmarks/gpu.sh cifar10   (carry .gpu-cifar10; CPU and RAM energy then go unmetered)
# Results go to $OUT (what comes back): the log, report-DATASET.md, throughput.json and
# runs-DATASET.tar.gz (every run's config, metrics and result; no checkpoints).
# Dry run on a CPU with tiny settings: GPU_DRY=1 LOCALEARN_DATA=../shared/data bash benchmarks/gpu.sh mnist
set -euo pipefail
which=${1:?usage: gpu.sh mnist|cifar10}
[[ $which == mnist || $which == cifar10 ]] || { echo "unknown dataset $which: mnist or cifar10" >&2; exit 2; }
out=${OUT:-benchmarks/out/gpu}
work=${GPU_WORK:-/tmp/localearn-gpu}
mkdir -p "$out" "$work"
exec > >(tee -a "$out/gpu-$which.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # localearn from the checkout
py=${PYTHON:-python3}
if [[ -d .whl ]] && ! $py -c "import codecarbon" 2>/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
if [[ -f .gpu-mnist/mnist.tar.gz && $which == mnist ]]; then
  mkdir -p /tmp/ld && tar -C /tmp/ld -xzf .gpu-mnist/mnist.tar.gz && export LOCALEARN_DATA=/tmp/ld
elif [[ -f .gpu-cifar10/cifar10.zip && $which == cifar10 ]]; then
  mkdir -p /tmp/ld && $py -m zipfile -e .gpu-cifar10/cifar10.zip /tmp/ld && export LOCALEARN_DATA=/tmp/ld
fi
: "${LOCALEARN_DATA:?no data: carry .gpu-$which (pack-gpu-data.sh) or set LOCALEARN_DATA}"

if [[ ${GPU_DRY:-0} == 1 ]]; then  # the same commands, tiny, on the CPU
  device=cpu run_flags=(--epochs 1) tp_flags=(--batches 64 --steps 1 --repeats 1)
else  # GPU_EPOCHS caps the comparison's epochs if the minutes run short (then the report says so)
  device=cuda run_flags=(${GPU_EPOCHS:+--epochs $GPU_EPOCHS}) tp_flags=()
  nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv
fi
$py -c "import torch, localearn; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'localearn', localearn.__version__)"
$py -c "import codecarbon; print('codecarbon', codecarbon.__version__)" || echo "codecarbon missing: CPU and RAM energy unmetered"
section() { echo; echo "== $1 (at ${SECONDS} s)"; }

if [[ $which == mnist ]]; then
  section "tests that need a GPU: no rule's step waits for the device; the best state waits on the CPU"
  $py -m pytest -q -p no:cacheprovider tests/test_host_sync.py tests/test_trainer.py tests/test_parallel.py \
    -k "on_a_gpu or cuda" \
    || echo "GPU tests FAILED (the measurements go on)"
  if [[ $device == cuda ]]; then
    section "NVML counter against power sampling, 5 epochs per rule"
    $py benchmarks/nvml_crosscheck.py --epochs 5 --idle 5
  fi
  section "throughput and step memory, every rule"
  $py benchmarks/throughput.py --device $device --json "$out/throughput.json" "${tp_flags[@]}"
fi
section "Mono-Forward against backprop on $which, two seeds each, to convergence"
$py -m localearn.experiments compare "$which" --algos mono_forward,backprop --seeds 2 --device $device \
  --out "$work" --no-progress "${run_flags[@]}"
cp "$work/compare-$which/report/report.md" "$out/report-$which.md"
tar -C "$work" -czf "$out/runs-$which.tar.gz" --exclude=checkpoint.pt --exclude='*.png' "compare-$which"
if [[ $which == mnist ]]; then
  section "layer-parallel Mono-Forward on one $device: one process, wavefront, two stage processes"
  if [[ $device == cuda ]]; then par=(EPOCHS=3 REPEATS=2); else par=(EPOCHS=1 REPEATS=1); fi
  env "${par[@]}" DEVICE=$device RUNS="one-thread wavefront two-stages" OUT="$work/parallel" PYTHON=$py \
    bash benchmarks/parallel.sh || echo "parallel benchmark FAILED"
fi
section "done"
