#!/usr/bin/env bash
# The nccl path of `--workers` on one GPU, for a machine that has one (docs/distributed.md, "GPU check").
#
#   bash benchmarks/gpu_distributed_check.sh              # cuda, nccl; ~2-4 minutes with the start-up
#   DEVICE=cpu STEPS=2 bash benchmarks/gpu_distributed_check.sh   # the same checks on gloo (a dry run)
#
# 1. Exactness: sinusoid MAML in float64 on $DEVICE, trained once plain and once with --workers=1 (a
#    torch.distributed process group of one over nccl: the gradients go through a real all_gather). The two
#    checkpoints must be equal bit for bit (one worker reproduces the one-process step exactly).
# 2. Speed: `bench` of MAML Omniglot 5-way 1-shot 15-query, meta-batch 32, second order (synthetic images),
#    plain and --workers=1, so that the cost of the collective on the GPU shows. One JSON line each.
# Exit status 0 when the weights agree; the JSON lines and a verdict go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

SINUSOID=(--backend=torch "--device=$DEVICE" --dtype=float64 --meta_batch_size=8 --hidden=40 --steps=50
          --val_every=0 --val_episodes=0 --checkpoint_every=0 --log_every=1000)
timeout 600 "$PYTHON" -m dualmeta train "${SINUSOID[@]}" "--logdir=$OUT/plain"
timeout 600 "$PYTHON" -m dualmeta train "${SINUSOID[@]}" "--logdir=$OUT/workers1" --workers=1
"$PYTHON" - "$OUT/plain" "$OUT/workers1" <<'EOF'
import sys
import numpy as np
from dualmeta.weights import load_weights
plain, _ = load_weights(f"{sys.argv[1]}/checkpoint.safetensors")
one, _ = load_weights(f"{sys.argv[2]}/checkpoint.safetensors")
worst = {name: float(np.max(np.abs(plain[name] - one[name]))) for name in plain}
same = all(np.array_equal(plain[name], one[name]) for name in plain)
print(f"weights plain vs --workers=1: {'bit for bit equal' if same else 'DIFFERENT'}; "
      f"max |difference| {max(worst.values()):.3g} ({max(worst, key=worst.get)})")
sys.exit(0 if same else 1)
EOF

BENCH=(--backend=torch "--device=$DEVICE" --tasks=omniglot --learner=maml --ways=5 --shots=1 --queries=15
       --meta_batch_size=32 "--steps=$STEPS" --warmup=3)
timeout 600 "$PYTHON" -m dualmeta bench "${BENCH[@]}"
timeout 600 "$PYTHON" -m dualmeta bench "${BENCH[@]}" --workers=1
