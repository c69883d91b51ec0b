#!/usr/bin/env bash
# Accuracy against the papers (issue 2): Mono-Forward and backprop on the presets' networks, CPU.
# Usage: LOCALEARN_DATA=../shared/data bash benchmarks/accuracy.sh [mnist|cifar10|ff|dfa|fg|ccl|noprop_dt|noprop_prototype|noprop_bp|noprop_ct|ccl_paper|mf_reference|ff_loewex|fg_momentum|db_mnist|db_mnist_deep|db_mnist_cosine|db_ablation|db_cifar10|db_cifar10_cosine|db_cifar10_one_block|db_cifar10_long|all] > benchmarks/out/accuracy.log
# Every run goes through the command line, so the figures are the ones a user gets.
set -euo pipefail
which=${1:-all}
out=${OUT:-benchmarks/out/runs}
run() { python -m localearn.experiments "$@" --out "$out" --no-progress --device cpu; }
# A run named NAME that exists already is continued (--resume): with a higher --epochs, one that stopped at
# its cap trains on to the new cap, as if that had been its cap from the start (constant learning rate).
run_named() { local name=$1; shift; run "$@" --name "$name" $([[ -f $out/$name/config.json ]] && echo --resume); }
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
if [[ $which == dfa || $which == all ]]; then
  # DFA on the CCL paper's tanh MLPs (its presets, spelled out), SGD (momentum 0.9), patience 10; backprop
  # beside it on the same network, optimizer, learning rate and stopping rule.
  mnist_dfa=(--model mlp:256,256,256,256,256:tanh --batch-size 128 --lr 0.1 --hp optimizer=sgd --epochs 100)
  run mnist --algo dfa --seed 0 "${mnist_dfa[@]}"
  run mnist --algo backprop --seed 0 "${mnist_dfa[@]}"
  cifar_dfa=(--model mlp:1024,1024,1024:tanh --no-augment --lr 0.01 --hp optimizer=sgd --epochs "${CIFAR_EPOCHS:-40}")
  run cifar10 --algo dfa --seed 0 "${cifar_dfa[@]}"
  run cifar10 --algo backprop --seed 0 "${cifar_dfa[@]}"
  # Convolutional units: a 3-epoch check on MNIST (two conv units, ReLU, Adam 1e-3), backprop beside it.
  run mnist --algo dfa --seed 0 --model cnn:32,64 --lr 1e-3 --hp optimizer=adam --epochs 3
  run mnist --algo backprop --seed 0 --model cnn:32,64 --lr 1e-3 --epochs 3
fi
if [[ $which == fg || $which == all ]]; then
  # Forward gradients on MNIST, 1024-1024 ReLU MLP: FG-W (plain SGD, small step, 30-epoch cap: it learns
  # slowly), local_activity (Adam 1e-4, 32 features per directional derivative, 60-epoch cap), and
  # backprop (its MNIST preset, Adam 1e-3) on the same network.
  run mnist --algo forward_gradient --seed 0 --model mlp:1024,1024 --lr 1e-5 --hp optimizer=sgd --epochs 30 \
    --name mnist-forward_gradient_weight-mlp1024x1024-s0
  run mnist --algo forward_gradient --seed 0 --model mlp:1024,1024 --hp variant=local_activity --hp groups=32 \
    --lr 1e-4 --epochs 60 --name mnist-forward_gradient_local_activity-mlp1024x1024-s0
  run mnist --algo backprop --seed 0 --model mlp:1024,1024 --epochs 60
fi
if [[ $which == ccl || $which == all ]]; then
  # Counter-current learning with its presets (ELU bias-free MLPs, batch 256, SGD, the code's loss; MNIST
  # lr 1 and clip 1 as the reference yaml, CIFAR-10 lr 0.5 and clip 0.5); backprop beside it on the same
  # networks and batch, with its own presets' Adam learning rates. The first CIFAR line is the yaml's.
  run mnist --algo counter_current --seed 0
  run mnist --algo backprop --seed 0 --model mlp:256,256,256,256,256:elu:nobias --batch-size 256
  run cifar10 --algo counter_current --seed 0 --epochs "${CIFAR_CCL_EPOCHS:-60}" --lr 1 --hp clip=1 \
    --name cifar10-counter_current-mlp1024x1024x1024-elu-nobias-s0
  run cifar10 --algo counter_current --seed 0 --epochs "${CIFAR_CCL_EPOCHS:-60}" \
    --name cifar10-counter_current-mlp1024x1024x1024-elu-nobias-lr0.5-clip0.5-s0
  run cifar10 --algo backprop --seed 0 --model mlp:1024,1024,1024:elu:nobias --batch-size 256 --no-augment \
    --epochs "${CIFAR_CCL_EPOCHS:-60}"
fi
# Comparisons under a paper's recipe (issue 16): every rule with the settings that paper gave it, backprop
# included, each set in its own directory so that `report` on it gives that paper's comparison.
if [[ $which == ccl_paper ]]; then
  # The CCL paper's Table 1: CCL (ELU, bias-free), DFA and backprop (tanh, SGD, lr and clip from the paper's
  # grid: benchmarks/ccl_bp_grid.sh) on its MLPs, to its 100 epochs, patience 10.
  for dataset in mnist cifar10; do
    for algo in counter_current dfa backprop; do
      (out=$out/ccl_paper; run "$dataset" --algo "$algo" --recipe ccl_paper --seed 0 --epochs 100)
    done
  done
  python -m localearn.experiments report "$out/ccl_paper"
fi
if [[ $which == mf_reference ]]; then
  # The Mono-Forward reference study's MLP (He initialisation, zero biases, AdamW, M_L without bias).
  for algo in mono_forward backprop; do
    (out=$out/mf_reference; run mnist --algo "$algo" --recipe mf_reference --seed 0)
  done
  python -m localearn.experiments report "$out/mf_reference"
fi
if [[ $which == ff_loewex ]]; then
  # What each of loeweX's extras changes (issue 16), one at a time on the FF preset, on a short budget
  # (FF_EPOCHS, default 15; the cool-down spans its second half), in a directory of their own.
  e=${FF_EPOCHS:-15}
  for extra in none peer_normalisation=0.03 init=loewex lr_schedule=linear_cooldown; do
    (out=$out/ff_loewex; run mnist --algo forward_forward --seed 0 --epochs "$e" \
      $([[ $extra != none ]] && echo --hp "$extra") --name "ff-${extra%%=*}-s0")
  done
  python -m localearn.experiments report "$out/ff_loewex" --baseline forward_forward
fi
if [[ $which == fg_momentum ]]; then
  # Forward gradient's weight preset: plain SGD at lr 1e-4 (the port's momentum 0) against the earlier
  # momentum 0.9 at lr 1e-5, FG_EPOCHS each (default 5).
  for setting in "1e-4 0" "1e-5 0.9"; do
    set -- $setting
    (out=$out/fg_momentum; run mnist --algo forward_gradient --seed 0 --lr "$1" --hp momentum="$2" \
      --epochs "${FG_EPOCHS:-5}" --name "fg-lr$1-momentum$2-s0")
  done
fi
# NoProp (issue 13) on MNIST with its presets (T = 10 blocks of the paper's block, eta 0.1, AdamW 1e-3 / wd
# 1e-3, batch 128, one-hot embeddings, no augmentation). One DT epoch is 10 passes over the data (9 to 20
# minutes on 2 CPU cores), so the CPU runs stop at a small epoch cap; the paper ran 100 epochs. A higher
# NOPROP_EPOCHS continues the runs already there.
if [[ $which == noprop_dt || $which == all ]]; then
  run_named mnist-noprop-noprop256-s0 mnist --algo noprop --seed 0 --epochs "${NOPROP_EPOCHS:-5}"
fi
if [[ $which == noprop_prototype ]]; then
  # The paper's best column: prototype embeddings (learned, starting as the class-mean images).
  run mnist --algo noprop --seed 0 --hp embedding=prototype --epochs "${NOPROP_EPOCHS:-5}" \
    --name mnist-noprop_prototype-noprop256-s0
fi
if [[ $which == noprop_bp || $which == all ]]; then
  # The structure-matched baseline: the same 10 blocks chained as in inference, trained end to end by
  # backprop (preset model=noprop: AdamW 1e-3 / wd 1e-3), under the same epoch cap and stopping rule.
  run_named mnist-backprop-noprop256-s0 mnist --algo backprop --model noprop --seed 0 --epochs "${NOPROP_EPOCHS:-5}"
fi
if [[ $which == noprop_ct || $which == all ]]; then
  # NoProp-CT (preset variant=ct: Adam 1e-3, eta 1); 20 inference steps instead of the paper's 1000, since
  # every validation runs the whole chain (1000 steps would take about 15 minutes per epoch here).
  run mnist --algo noprop --seed 0 --hp variant=ct --hp steps=20 --epochs "${NOPROP_CT_EPOCHS:-15}" \
    --name mnist-noprop_ct-noprop256-s0
fi

# DiffusionBlocks (issue 14) on MNIST: the preset residual MLP (256 wide, 6 layers), B = 3, one random block
# per batch. One of its epochs is 3 data passes, so backprop on the same backbone gets 3 times the epochs
# and the patience: the same data passes and the same stopping rule, counted in passes.
if [[ $which == db_mnist || $which == all ]]; then
  run mnist --algo diffusion_blocks --seed 0 --epochs "${DB_EPOCHS:-20}" --patience 5
  run mnist --algo backprop --model resmlp --seed 0 --epochs $((3 * ${DB_EPOCHS:-20})) --patience 15
fi
if [[ $which == db_ablation || $which == all ]]; then
  # The partition ablation: equal steps in ln sigma instead of equal probability.
  run mnist --algo diffusion_blocks --seed 0 --hp partition=uniform --epochs "${DB_EPOCHS:-20}" --patience 5 \
    --name mnist-diffusion_blocks_uniform-resmlp256x6-s0
fi
if [[ $which == db_mnist_deep ]]; then
  # Four layers per block, as the paper's 12-layer ViT with B = 3: the highest-noise block, which must
  # classify from x alone, gets twice the depth. Backprop on the same 12-layer backbone beside it.
  run mnist --algo diffusion_blocks --model resmlp:256,12 --seed 0 --epochs "${DB_EPOCHS:-20}" --patience 5
  run mnist --algo backprop --model resmlp:256,12 --seed 0 --epochs $((3 * ${DB_EPOCHS:-20})) --patience 15
fi
if [[ $which == db_mnist_cosine ]]; then
  # The official README's recipe: the learning rate falls along a cosine to a tenth of its start over the
  # budget (lr 5e-4 to 5e-5 there); the same schedule for backprop, over its (3 times longer) budget.
  cosine=(--hp lr_schedule=cosine --hp lr_floor=0.1)
  run mnist --algo diffusion_blocks --seed 0 "${cosine[@]}" --epochs "${DB_EPOCHS:-20}" --patience 5 \
    --name mnist-diffusion_blocks_cosine-resmlp256x6-s0
  run mnist --algo backprop --model resmlp --seed 0 "${cosine[@]}" --epochs $((3 * ${DB_EPOCHS:-20})) --patience 15 \
    --name mnist-backprop_cosine-resmlp256x6-s0
fi
if [[ $which == db_cifar10_cosine ]]; then
  # db_mnist_cosine's recipe on CIFAR-10 (cap DB_CIFAR_EPOCHS epochs of 3 passes, backprop 3 times as many
  # epochs of one pass); both runs at once, one thread each, so they share the machine's load alike.
  cosine=(--hp lr_schedule=cosine --hp lr_floor=0.1)
  run cifar10 --algo diffusion_blocks --seed 0 "${cosine[@]}" --epochs "${DB_CIFAR_EPOCHS:-12}" --patience 5 \
    --name cifar10-diffusion_blocks_cosine-resmlp512x6-s0 &
  run cifar10 --algo backprop --model resmlp --seed 0 "${cosine[@]}" --epochs $((3 * ${DB_CIFAR_EPOCHS:-12})) \
    --patience 15 --name cifar10-backprop_cosine-resmlp512x6-s0 &
  wait
fi
if [[ $which == db_cifar10_one_block ]]; then
  # The cosine recipe with B = 1: the whole backbone one denoiser over all noise levels, trained end to end
  # (an epoch is one pass, so 3 x DB_CIFAR_EPOCHS epochs are the same passes). Against db_cifar10_cosine it
  # separates what the diffusion objective costs from what splitting the backbone into blocks costs.
  run cifar10 --algo diffusion_blocks --seed 0 --hp blocks=1 --hp lr_schedule=cosine --hp lr_floor=0.1 \
    --epochs $((3 * ${DB_CIFAR_EPOCHS:-12})) --patience 15 --name cifar10-diffusion_blocks_b1_cosine-resmlp512x6-s0
fi
if [[ $which == db_cifar10_long ]]; then
  # db_cifar10_cosine's DiffusionBlocks run with three times the cap (DB_CIFAR_EPOCHS epochs of 3 passes, 36
  # by default: 108 passes) and two inference grid points, the grid validation chose on the 36-pass run, so
  # that the best state and the stopping rule are judged on the predictions it will be used for.
  # Then backprop on the same backbone with the same passes and patience in passes (a finished run named
  # here is only read again: run_named resumes it).
  run_named cifar10-diffusion_blocks_cosine_long-resmlp512x6-s0 cifar10 --algo diffusion_blocks --seed 0 \
    --hp lr_schedule=cosine --hp lr_floor=0.1 --hp inference_steps=2 --epochs "${DB_CIFAR_EPOCHS:-36}" --patience 5
  run_named cifar10-backprop_cosine_long-resmlp512x6-s0 cifar10 --algo backprop --model resmlp --seed 0 \
    --hp lr_schedule=cosine --hp lr_floor=0.1 --epochs $((3 * ${DB_CIFAR_EPOCHS:-36})) --patience 15
fi
if [[ $which == db_cifar10 || $which == all ]]; then
  # CIFAR-10, residual MLP 512 wide, crop+flip (the dataset preset), the same pairing of budgets.
  run cifar10 --algo diffusion_blocks --seed 0 --epochs "${DB_CIFAR_EPOCHS:-10}" --patience 5
  run cifar10 --algo backprop --model resmlp --seed 0 --epochs $((3 * ${DB_CIFAR_EPOCHS:-10})) --patience 15
fi
