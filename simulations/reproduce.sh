#!/usr/bin/env bash
# Scaled-down reproductions of both papers' headline experiments (docs/results.md).
# Usage: bash simulations/reproduce.sh [DATA_DIR] [OUT_DIR] [SECTIONS]
#   SECTIONS: any of "har pruning fl long pruning-long" (default: "har pruning fl"); about 1.5 h on
#   2 cores. Seeds are added one at a time (--seeds 1, 2, 3 into the same folder: each call
#   resumes the last), so a stopped script leaves complete seeds behind; re-run to go on.
set -euo pipefail
DATA="${1:-../shared/data}"
OUT="${2:-docs/results}"
SECTIONS="${3:-har pruning fl}"
RATIOS="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"

for section in $SECTIONS; do
  case "$section" in
  har)
    # 3. UCI HAR, per-subject clients: Titan vs random selection (3 seeds), and warm-up-loss vs
    #    random pruning over rho (1 seed) with full data as the reference.
    for n in 1 2 3; do
      fedtitan sweep har --grid "selection.method=titan,rs" --seeds "$n" --quiet --no-report \
        --set run.rounds=20 --set "data.data_dir=$DATA" --out "$OUT/har-selection"
    done
    fedtitan sweep har --grid "pruning.method=warmup-loss,random" --grid "pruning.ratio=$RATIOS" \
      --seeds 1 --quiet --no-report --set run.rounds=10 --set server.fraction=1.0 \
      --set "data.data_dir=$DATA" --out "$OUT/har-pruning"
    fedtitan sweep har --grid "pruning.method=full" --grid "pruning.ratio=1.0" \
      --seeds 1 --quiet --set run.rounds=10 --set server.fraction=1.0 \
      --set "data.data_dir=$DATA" --out "$OUT/har-pruning"
    ;;
  pruning)
    # 2. Dataset pruning: 15 devices, Dirichlet 0.5, scaled (small CNN, 6k training images,
    #    8 rounds): warm-up-loss vs random pruning at rho = 0.1..0.9, full data, 3 seeds.
    for n in 1 2 3; do
      fedtitan sweep pruning-cifar10 --grid "pruning.method=warmup-loss,random" --grid "pruning.ratio=$RATIOS" \
        --seeds "$n" --quiet --no-report --set data.max_train=6000 --set run.rounds=8 \
        --set server.eval_samples=2000 --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10"
      fedtitan sweep pruning-cifar10 --grid "pruning.method=full" --grid "pruning.ratio=1.0" \
        --seeds "$n" --quiet --set data.max_train=6000 --set run.rounds=8 \
        --set server.eval_samples=2000 --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10"
    done
    ;;
  fl)
    # 1. Titan in federated learning (Appendix B setting, scaled: small CNN, 20k training images,
    #    60 rounds): 50 devices, 5 classes each, 20% per round, 3 local iterations, B = 10 of
    #    v = 100 streamed, buffer 30; Titan vs all seven baselines and C-IS alone, 3 seeds.
    for n in 1 2 3; do
      fedtitan sweep titan-fl-cifar10 --grid "selection.method=titan,rs,is,hl,ll,ce,ocs,camel" \
        --seeds "$n" --quiet --set model.name=cnn --set data.max_train=20000 --set run.rounds=60 \
        --set server.eval_every=5 --set server.eval_samples=3000 --set "data.data_dir=$DATA" \
        --out "$OUT/fl-titan-cifar10"
    done
    ;;
  pruning-long)
    # 2b. Pruning further into training: 15k training images, 20 rounds, rho in {0.1, 0.2, 0.5}
    #     and full data, 3 seeds.
    for n in 1 2 3; do
      fedtitan sweep pruning-cifar10 --grid "pruning.method=warmup-loss,random" --grid "pruning.ratio=0.1,0.2,0.5" \
        --seeds "$n" --quiet --no-report --set data.max_train=15000 --set run.rounds=20 --set server.eval_every=2 \
        --set server.eval_samples=3000 --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10-longer"
      fedtitan sweep pruning-cifar10 --grid "pruning.method=full" --grid "pruning.ratio=1.0" \
        --seeds "$n" --quiet --set data.max_train=15000 --set run.rounds=20 --set server.eval_every=2 \
        --set server.eval_samples=3000 --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10-longer"
    done
    ;;
  long)
    # 1b. One longer run: 150 rounds, Titan vs random, 1 seed.
    fedtitan sweep titan-fl-cifar10 --grid "selection.method=titan,rs" --seeds 1 --quiet \
      --set model.name=cnn --set data.max_train=20000 --set run.rounds=150 --set server.eval_every=10 \
      --set server.eval_samples=3000 --set "data.data_dir=$DATA" --out "$OUT/fl-titan-cifar10-150"
    ;;
  *) echo "unknown section '$section' (choose from: har pruning fl long pruning-long)" >&2; exit 2 ;;
  esac
done
