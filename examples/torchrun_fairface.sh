#!/usr/bin/env bash
# The FairFace probe on every GPU of one machine with torchrun (or accelerate launch): one
# process per GPU, each running its shard (RANK of WORLD_SIZE) on its GPU (LOCAL_RANK) into one
# run directory. Run it again to resume. For several machines, start it on each with
# --nnodes N --node-rank I --rdzv-endpoint HOST:PORT and a run directory they all share.
#
#   bash examples/torchrun_fairface.sh [GPUS]
set -euo pipefail

GPUS=${1:-$(nvidia-smi --list-gpus | wc -l)}
PROBE=${PROBE:-probes/fairface.yaml}
RUN_DIR=${RUN_DIR:-runs/fairface-idefics-9b-instruct}
export TOKENIZERS_PARALLELISM=false

# --no-python: torchrun starts the `audit` command itself, once per GPU. audit uses no process
# group: the ranks share nothing but the run directory.
torchrun --standalone --nproc-per-node "$GPUS" --no-python \
  audit run "$PROBE" --out "$RUN_DIR" --no-progress

# The same with accelerate:
#   accelerate launch --multi_gpu --num_processes "$GPUS" --no_python \
#     audit run "$PROBE" --out "$RUN_DIR" --no-progress

audit status "$RUN_DIR"
audit analyze "$RUN_DIR"
