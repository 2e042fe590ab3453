#!/usr/bin/env bash
# Scaled-down reproductions of both papers' headline experiments (docs/results.md).
# Usage: bash simulations/papers/reproduce.sh [DATA_DIR] [OUT_DIR] [SECTIONS]
#   SECTIONS: any of "har pruning fl long pruning-long" (the scaled studies, about 1.5 h on 2 cores;
#   the default), "strategies dynamics noise idle" (about 4 h) and "fl-full pruning-full" (the
#   papers' scale: about 10 h and 8 h on 2 cores for 3 seeds). Seeds are added one at a time
#   (--seeds 1, 2, 3 into the same folder: each call resumes the last), so a stopped script leaves
#   complete seeds behind; re-run to go on (single_device.py resumes finished method/seed pairs too).
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
  fl-full)
    # 1 (paper scale). Titan, Appendix B as written: 50 devices, the full CIFAR-10 training set (1,000
    #    images each), 5 classes each, 20% per round, 3 local iterations of B = 10 from v = 100,
    #    buffer 30, MobileNetV1, lr 0.1 x 0.95 per 100 steps, 300 rounds, 3 seeds; Titan with its
    #    pipeline, rs, is and cis (C-IS without the coarse filter). Evaluation every 10 rounds on a
    #    fixed 2,000-image subset.
    for n in 1 2 3; do
      fedtitan sweep titan-fl-cifar10 --grid selection.method=titan --seeds "$n" --set run.pipeline=true \
        --quiet --no-report --set run.rounds=300 --set server.eval_every=10 --set server.eval_samples=2000 \
        --set "data.data_dir=$DATA" --out "$OUT/fl-titan-cifar10-full"
      fedtitan sweep titan-fl-cifar10 --grid selection.method=rs,is,cis --seeds "$n" \
        --quiet --no-report --set run.rounds=300 --set server.eval_every=10 --set server.eval_samples=2000 \
        --set "data.data_dir=$DATA" --out "$OUT/fl-titan-cifar10-full"
    done
    fedtitan report "$OUT/fl-titan-cifar10-full"   # report.html + report-tables.json
    ;;
  pruning-full)
    # 2 (paper scale). Pruning: 15 devices, Dirichlet 0.5 over the full CIFAR-10 training set, small
    #    CNN, Adam + cosine, one warm-up epoch, 40 rounds of one epoch, rho in {0.1, 0.2, 0.5} + full
    #    data; warm-up-loss, random, and random after the same warm-up (random-warmup); 3 seeds.
    for n in 1 2 3; do
      fedtitan sweep pruning-cifar10 --grid pruning.method=full --grid pruning.ratio=1.0 --seeds "$n" \
        --quiet --no-report --set run.rounds=40 --set server.eval_every=2 --set server.eval_samples=2000 \
        --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10-full"
      fedtitan sweep pruning-cifar10 --grid pruning.method=warmup-loss,random,random-warmup \
        --grid pruning.ratio=0.1,0.2,0.5 --seeds "$n" \
        --quiet --no-report --set run.rounds=40 --set server.eval_every=2 --set server.eval_samples=2000 \
        --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10-full"
    done
    # Ablation (2 seeds): the top warm-up losses within each class, so the kept label mix is the
    # client's (warmup-loss-stratified): is it the hard samples or the label shift that costs?
    fedtitan sweep pruning-cifar10 --grid pruning.method=warmup-loss-stratified --grid pruning.ratio=0.1,0.2,0.5 \
      --seeds 2 --quiet --no-report --set run.rounds=40 --set server.eval_every=2 --set server.eval_samples=2000 \
      --set "data.data_dir=$DATA" --out "$OUT/pruning-cifar10-full"
    fedtitan report "$OUT/pruning-cifar10-full"
    # Which samples warm-up-loss pruning keeps on these clients vs a random subset (label shift;
    # round-1 warm-up epoch from the seed's initial model, no training rounds): about 20 min, 2 seeds.
    python -m simulations.papers.pruning_kept --data-dir "$DATA" --seeds 2 --out "$OUT/pruning-kept"
    ;;
  strategies)
    # Titan and random selection under FedAvg, FedProx (mu 0.01) and FedAdam (server lr 0.01), at
    # the scale of the FL study above (small CNN, 20k images, 60 rounds), 3 seeds.
    FL=(--quiet --no-report --set model.name=cnn --set data.max_train=20000 --set run.rounds=60
        --set server.eval_every=5 --set server.eval_samples=3000 --set "data.data_dir=$DATA" --out "$OUT/fl-strategies")
    for n in 1 2 3; do
      fedtitan sweep titan-fl-cifar10 --grid selection.method=titan,rs --grid server.strategy=fedavg --seeds "$n" "${FL[@]}"
      fedtitan sweep titan-fl-cifar10 --grid selection.method=titan,rs --grid server.strategy=fedprox --seeds "$n" \
        --set server.strategy_options.proximal_mu=0.01 "${FL[@]}"
      fedtitan sweep titan-fl-cifar10 --grid selection.method=titan,rs --grid server.strategy=fedadam --seeds "$n" \
        --set server.strategy_options.eta=0.01 "${FL[@]}"
    done
    ;;
  dynamics)
    # Living fleets at the FL study's scale, 3 seeds. (a) Fluctuating idle compute on the selecting
    # unit (random walk of the idle share in 0.1..1 every 5 s; speed, bandwidth, availability fixed):
    # Titan (pipelined) with a fixed buffer of 30 vs buffer_size=auto, and random selection.
    # (b) Diurnal availability (a 150 s "day": about one per run; 30% available at midday) under the
    # deadline policies: wait for all, a 1.2 s deadline (the 5 W Nanos miss it), first-k (k + 30%).
    FL=(--quiet --no-report --set model.name=cnn --set data.max_train=20000 --set run.rounds=60
        --set server.eval_every=5 --set server.eval_samples=3000 --set "data.data_dir=$DATA")
    IDLE=(--set fleet.dynamics=random-walk --set fleet.dynamics_options.step_s=5 --set fleet.dynamics_options.sigma=0.3
          --set fleet.dynamics_options.p_leave=0 --set fleet.dynamics_options.speed_min=1
          --set fleet.dynamics_options.bandwidth_min=1 --set fleet.dynamics_options.select_share_min=0.1)
    DAY=(--set fleet.dynamics=diurnal --set fleet.dynamics_options.period_s=150 --set fleet.dynamics_options.slot_s=5
         --set fleet.dynamics_options.availability_min=0.3)
    for n in 1 2 3; do
      fedtitan sweep titan-fl-cifar10 --grid selection.buffer_size=30,auto --seeds "$n" --set run.pipeline=true \
        "${IDLE[@]}" "${FL[@]}" --out "$OUT/fl-idle-compute"
      fedtitan sweep titan-fl-cifar10 --grid selection.method=rs --seeds "$n" "${IDLE[@]}" "${FL[@]}" \
        --out "$OUT/fl-idle-compute"
      fedtitan sweep titan-fl-cifar10 --grid server.policy=wait-all,deadline,first-k --seeds "$n" \
        --set server.deadline_s=1.2 --set server.over_commit=0.3 "${DAY[@]}" "${FL[@]}" --out "$OUT/fl-diurnal-policies"
    done
    ;;
  noise)
    # 3a. Noisy streams on one device (Appendix B): 10/20/30% of the labels flipped, or 40% of the
    #     inputs with Gaussian noise (sd 1 in normalised units); Titan, random, IS; 3 seeds.
    for ln in 0.1 0.2 0.3; do
      python -m simulations.papers.single_device --steps 1500 --seeds 3 --data-dir "$DATA" --methods "titan;rs;is" \
        --label-noise "$ln" --out "$OUT/single-device-noise/label-$ln"
    done
    python -m simulations.papers.single_device --steps 1500 --seeds 3 --data-dir "$DATA" --methods "titan;rs;is" \
      --feature-noise 0.4 --feature-sigma 1.0 --out "$OUT/single-device-noise/feature-0.4"
    ;;
  idle)
    # 3b. Fluctuating idle compute on one device (Appendix B, Fig. 9): the selecting unit's idle share
    #     follows a random walk in 0.1..1 on a Jetson Nano (CPU trains, GPU selects); Titan with the
    #     paper's buffers 15, 30, 100 and with buffer=auto (what the idle GPU can score per step),
    #     and random selection; accuracy and the simulated pipelined clock; 3 seeds.
    python -m simulations.papers.single_device --steps 1500 --seeds 3 --data-dir "$DATA" --idle walk \
      --methods "titan;titan:buffer=auto;titan:buffer=15;titan:buffer=100;rs" --out "$OUT/single-device-idle"
    ;;
  *) echo "unknown section '$section' (choose from: har pruning fl long pruning-long strategies dynamics noise idle fl-full pruning-full)" >&2; exit 2 ;;
  esac
done
