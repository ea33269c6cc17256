#!/usr/bin/env bash
# The FairFace probe on a Ray cluster: one actor per GPU, each running shards into one run
# directory that every node mounts (NFS, Lustre, ...). Needs: pip install 'vlm-bias-audit[ray]'
# and the same audit environment on every node.
#
#   ray start --head                          # on the head node
#   ray start --address HEAD:6379             # on every other node
#   bash examples/ray_fairface.sh             # on the head node
set -euo pipefail

PROBE=${PROBE:-probes/fairface.yaml}
RUN_DIR=${RUN_DIR:-/shared/runs/fairface-idefics-9b-instruct}
# More shards than GPUs balance uneven shards; a lost actor is restarted and its shard resumed.
SHARDS=${SHARDS:-32}

audit run "$PROBE" --out "$RUN_DIR" --ray auto --ray-shards "$SHARDS"
audit status "$RUN_DIR"
audit analyze "$RUN_DIR"
