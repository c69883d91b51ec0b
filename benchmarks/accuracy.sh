#!/usr/bin/env bash
# Accuracy against the papers (issue 2): Mono-Forward and backprop on the presets' networks, CPU.
# Usage: LOCALEARN_DATA=../shared/data bash benchmarks/accuracy.sh [mnist|cifar10|all] > benchmarks/out/accuracy.log
# Every run goes through the command line, so the figures are the ones a user gets.
set -euo pipefail
which=${1:-all}
out=${OUT:-benchmarks/out/runs}
run() { python -m localearn.experiments "$@" --out "$out" --no-progress --device cpu; }
if [[ $which == mnist || $which == all ]]; then
  # 2x1000 MLP (Mono-Forward's MNIST network), preset lr, epoch cap 100, patience 10 on val accuracy.
  run mnist --algo mono_forward --seed 0
  run mnist --algo backprop --seed 0
fi
if [[ $which == cifar10 || $which == all ]]; then
  # 3x2000 MLP on CIFAR-10 (JPEG copy), crop+flip; the same cap and stopping rule for both.
  run cifar10 --algo mono_forward --seed 0 --epochs "${CIFAR_EPOCHS:-40}" --patience 10
  run cifar10 --algo backprop --seed 0 --epochs "${CIFAR_EPOCHS:-40}" --patience 10
fi
if [[ $which == ff || $which == all ]]; then
  # Forward-Forward, 3x1000 MLP (loeweX, Spyra), batch 100, goodness-per-label prediction, epoch cap 60
  # (Hinton's 60 epochs), patience 10 on validation accuracy; beside it backprop on the same network.
  run mnist --algo forward_forward --seed 0 --epochs 60 ${FF_ARGS:-}
  run mnist --algo backprop --seed 0 --model mlp:1000,1000,1000 --batch-size 100 --epochs 60
fi
