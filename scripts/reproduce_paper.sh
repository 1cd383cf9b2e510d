#!/usr/bin/env bash
# Reproduce the paper's toy-model runs at its configuration (SPEC §2) and compare them with the authors'
# trajectories (`toybb compare`). Every run resumes where it stopped when rerun.
#
#   bash scripts/reproduce_paper.sh                 # CPU: 1-layer Adam, 600 steps, seeds 0..SEEDS-1
#   STEPS=10000 FULL=1 bash scripts/reproduce_paper.sh   # GPU: 10k steps, plus the 3-layer Adam/SGD/ReLU runs
#                                                        # and the 1-layer run without BOS (SPEC §3: does the
#                                                        # first token become the sink? not at the CPU scale)
#
# SEEDS (default 1 on a CPU: one paper step takes ~4.6 s per seed on 2 cores), STEPS (default 600),
# OUT (default runs/paper). Seeds can also be trained as separate jobs (`--config` with train.seeds) and
# compared together: `toybb compare DIR1 DIR2 ...` pools them.
set -euo pipefail
SEEDS=${SEEDS:-1}
STEPS=${STEPS:-600}
OUT=${OUT:-runs/paper}
PRINT=${PRINT:-0,200,400,600,1000,2000,5000,10000}

toybb train --preset paper --steps "$STEPS" --seeds "$SEEDS" --ckpt-every 100 --out "$OUT/one_layer_adam"
toybb compare "$OUT/one_layer_adam" --steps "$PRINT"
if [ "${FULL:-0}" = 1 ]; then
  toybb train --preset paper --layers 3 --steps "$STEPS" --seeds "$SEEDS" --out "$OUT/three_layer_adam"
  toybb train --preset paper --layers 3 --optimizer sgd --steps "$STEPS" --seeds "$SEEDS" --out "$OUT/three_layer_sgd"
  toybb train --preset paper --layers 3 --attention relu --steps "$STEPS" --seeds "$SEEDS" \
    --out "$OUT/three_layer_relu_attention"
  toybb train --preset paper --no-bos --steps "$STEPS" --seeds "$SEEDS" --out "$OUT/one_layer_no_bos"
  for name in three_layer_adam three_layer_sgd three_layer_relu_attention; do
    toybb compare "$OUT/$name" --steps "$PRINT"
  done
fi
