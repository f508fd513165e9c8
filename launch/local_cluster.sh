#!/usr/bin/env bash
# A single-node Ray cluster on this machine, everything on 127.0.0.1, for `ray job submit`.
#   launch/local_cluster.sh start        # head on 127.0.0.1:6379, job server on :8265
#   RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_MODE=token dist-train submit \
#       --config launch/configs/tiny.yaml --set output_dir=$PWD/outputs
#   launch/local_cluster.sh stop     # this cluster only, not every Ray of the machine
# RAY_PORT, DASHBOARD_PORT and NUM_CPUS override the defaults; more `ray start` options may
# follow `start`.
# Several nodes on one machine (for trying hierarchical plans) need ray.cluster_utils; see
# tests/integration/test_ray_launch.py; `--set launcher=processes` simulates nodes without Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
# Jobs run `python` from the head's PATH: make it this checkout's virtualenv.
export PATH="$PWD/.venv/bin:$PATH"
PORT="${RAY_PORT:-6379}"
case "${1:-}" in
  start)
    shift
    for arg in "$@"; do
      case "$arg" in
        --port|--port=*) echo "$0: set RAY_PORT for the GCS port (stop finds the cluster by it)" >&2; exit 2 ;;
        # the job server's address is printed below from DASHBOARD_PORT: another one after it
        # would be the one ray start takes, and the printed address another's
        --dashboard-port|--dashboard-port=*) echo "$0: set DASHBOARD_PORT for the job server's port" >&2; exit 2 ;;
        --dashboard-host|--dashboard-host=*|--node-ip-address|--node-ip-address=*)
          echo "$0: ${arg%%=*}: this cluster listens on 127.0.0.1 only; for several machines see docs/operations.md" >&2; exit 2 ;;
        -h|--help) echo "usage: $0 start [ray start options]|stop; see the comments atop $0" >&2; exit 2 ;;
      esac
    done
    # Token authentication: `ray start` turns it on only when a token exists; `start` below
    # makes one (~/.ray/auth_token, readable by its owner alone), and the mode says so
    export RAY_AUTH_MODE=token
    # a session of its own, recorded by port, so that `stop` ends this cluster and no other
    python -m dist_train.launchers.local_cluster start --port="$PORT" \
      --node-ip-address=127.0.0.1 \
      --dashboard-host=127.0.0.1 --dashboard-port="${DASHBOARD_PORT:-8265}" \
      --num-cpus="${NUM_CPUS:-$(python -c 'from planners.cores import usable_cores as c; print(c())')}" \
      --disable-usage-stats "$@"
    # the job CLI sends the token only with RAY_AUTH_MODE=token: without it, refused
    echo "export RAY_ADDRESS=http://127.0.0.1:${DASHBOARD_PORT:-8265} RAY_AUTH_MODE=token"
    ;;
  stop)
    # this cluster only (`ray stop` ends every Ray instance of yours on the machine)
    python -m dist_train.launchers.local_cluster stop --port="$PORT"
    ;;
  *)
    echo "usage: $0 start [ray start options]|stop" >&2
    exit 2
    ;;
esac
