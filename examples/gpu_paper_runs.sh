#!/usr/bin/env bash
# Paper-length Omniglot runs on a GPU machine, written as results JSON like the CPU runs (issue 16, item 4).
#
#   bash examples/gpu_paper_runs.sh                     # every run, torch on cuda (tf too if it sees a GPU)
#   ONLY='maml_5w1s|snail' bash examples/gpu_paper_runs.sh      # the runs whose name matches a regex
#   DRY=1 bash examples/gpu_paper_runs.sh               # print the commands only
#   BACKENDS=torch HOURS=2 bash examples/gpu_paper_runs.sh       # a wall-clock cap per run (default 12 h)
#   MINUTES=3 ONLY='^maml_5w1s$' bash examples/gpu_paper_runs.sh # a cap in minutes (a short lease)
#
# Each run trains for the papers' number of steps (--max_steps; the time budget --minutes is only a cap),
# evaluates on the test classes of the Vinyals split as the CPU runs do (dualmeta.protocol: the curve on
# validation characters, the test set scored once), and writes results/omniglot/<name>_gpu_<backend>.json,
# so `python docs/collect_results.py` puts the rows on the results page beside the CPU ones, with the
# command and the budget. Checkpoints (neutral format, loadable in either backend) go to checkpoints/.
# Run it only on a lent GPU machine: it is not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ONLY=${ONLY:-.}
HOURS=${HOURS:-12}
MINUTES=${MINUTES:-$((HOURS * 60))}

if [ -z "${BACKENDS:-}" ]; then
  BACKENDS=torch
  if "$PYTHON" -c "import tensorflow as tf, sys; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)" \
      2>/dev/null; then
    BACKENDS="torch tf"
  fi
fi

# name | script | flags (paper settings; steps as in the papers' code where they give them)
RUNS=(
  "maml_5w1s|omniglot_maml.py|--learner=maml --max_steps=60000"                                   # Finn et al. 2017
  "maml_5w5s|omniglot_maml.py|--learner=maml --shots=5 --max_steps=60000"
  "maml_20w1s|omniglot_maml.py|--learner=maml --ways=20 --inner_lr=0.1 --inner_steps=5 --test_inner_steps=5 --meta_batch_size=16 --max_steps=60000"
  "fomaml_5w1s|omniglot_maml.py|--learner=fomaml --max_steps=60000"
  "metasgd_5w1s|omniglot_maml.py|--learner=metasgd --max_steps=60000"                             # Li et al. 2017
  "metasgd_20w1s|omniglot_maml.py|--learner=metasgd --ways=20 --meta_batch_size=16 --max_steps=60000"
  "anil_5w1s|omniglot_maml.py|--learner=anil --max_steps=60000"                                   # Raghu et al. 2020
  "reptile_5w1s|omniglot_maml.py|--learner=reptile --train_shots=10 --inner_batch_size=10 --max_steps=100000"  # Nichol et al.
  "lstm_5w1s|omniglot_maml.py|--learner=lstm --max_steps=40000"
  "snail_5w1s|omniglot_maml.py|--learner=snail --max_steps=40000"                                 # Mishra et al. 2018
  "snail_20w1s|omniglot_maml.py|--learner=snail --ways=20 --max_steps=40000"
  "protonet_60w5s|omniglot_metric.py|--learner=protonet --max_steps=20000"                        # Snell et al. 2017
  "matchingnet_5w1s|omniglot_metric.py|--learner=matchingnet --cosine_scale=10 --max_steps=40000"  # Vinyals et al.
)

mkdir -p checkpoints results/omniglot
for entry in "${RUNS[@]}"; do
  IFS='|' read -r name script flags <<<"$entry"
  [[ "$name" =~ $ONLY ]] || continue
  for backend in $BACKENDS; do
    device=()
    [ "$backend" = torch ] && device=(--device=cuda)
    # shellcheck disable=SC2206  # the flags are words
    command=("$PYTHON" "examples/$script" "--backend=$backend" "${device[@]}" $flags "--minutes=$MINUTES"
             "--out=results/omniglot/${name}_gpu_${backend}.json"
             "--checkpoint=checkpoints/${name}_gpu_${backend}.safetensors")
    echo "+ ${command[*]}"
    [ -n "${DRY:-}" ] || "${command[@]}"
  done
done
