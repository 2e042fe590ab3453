#!/usr/bin/env bash
# Scaled-down reproductions of both papers' headline experiments (docs/results.md).
# Usage: bash simulations/reproduce.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA="${1:-../shared/data}"
OUT="${2:-docs/results}"
# 1. Titan in federated learning (Appendix B setting, scaled: small CNN, 20k training images,
#    30 rounds, 1 seed): 50 devices, 5 classes each, 20% per round, 3 local iterations,
#    B = 10 of v = 100, buffer 30.
fedtitan sweep titan-fl-cifar10 --grid "selection.method=titan,rs,is,cis" --seeds 1 --quiet \
  --set model.name=cnn --set data.max_train=20000 --set run.rounds=30 --set server.eval_every=3 \
  --set server.eval_samples=2000 --set "data.data_dir=$DATA" --out "$OUT/fl-titan-cifar10"
# 1b. The same, 150 rounds (titan, rs, cis).
fedtitan sweep titan-fl-cifar10 --grid "selection.method=titan,rs,cis" --seeds 1 --quiet \
  --set model.name=cnn --set data.max_train=20000 --set run.rounds=150 --set server.eval_every=10 \
  --set server.eval_samples=2000 --set "data.data_dir=$DATA" --out "$OUT/fl-titan-cifar10-150"
# 2. Dataset pruning (15 devices, Dirichlet 0.5, scaled: small CNN, 6k training images,
#    8 rounds, 1 seed): warm-up-loss vs random pruning at rho in {0.1, 0.2, 0.5, 1.0}.
fedtitan sweep pruning-cifar10 --grid "pruning.method=warmup-loss,random" --grid "pruning.ratio=0.1,0.2,0.5,1.0" \
  --seeds 1 --quiet --set data.max_train=6000 --set run.rounds=8 --set server.eval_samples=2000 \
  --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10"
# 3. UCI HAR, per-subject clients: Titan vs random selection, and warm-up-loss pruning at rho=0.2.
fedtitan sweep har --grid "selection.method=titan,rs" --seeds 1 --quiet --set run.rounds=20 \
  --set "data.data_dir=$DATA" --out "$OUT/har-selection"
fedtitan sweep har --grid "pruning.method=warmup-loss,random" --seeds 1 --quiet --set pruning.ratio=0.2 \
  --set run.rounds=10 --set server.fraction=1.0 --set "data.data_dir=$DATA" --out "$OUT/har-pruning"
