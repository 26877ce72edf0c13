#!/usr/bin/env bash
# Ray inside a Slurm allocation, one job's cluster at a time per node, for slurm/moaa.sbatch.
#
#   source slurm/ray_cluster.sh                      # the functions below (moaa.sbatch does)
#   bash slurm/ray_cluster.sh start-head IP          # inside an srun step: a head, blocks
#   bash slurm/ray_cluster.sh start-worker GCS_ADDR  # inside an srun step: a worker, blocks
#   bash slurm/ray_cluster.sh cleanup-node [--rm]    # on a node after the steps ended
#
# What two jobs sharing a node could collide on is derived from the job id (RAY_JOB_TAG,
# default $SLURM_JOB_ID):
#   - the temp dir, /tmp/ray_<tag> (short: Ray's unix sockets live under it and a socket
#     path must stay under 108 bytes),
#   - the ports: a block of 1000 at RAY_PORT_BASE = 20000 + 1000 * (tag % 40), moved to the
#     next free block when the head's address already has one of them bound:
#       +0 GCS  +1 dashboard (Jobs API)  +2 Ray client  +3 node manager  +4 object manager
#       +5/+6 dashboard agent (http/grpc)  +7 runtime-env agent  +8 metrics
#       +100..+999 worker processes
#   - the auth token (a fresh one per job, passed in the environment, never in a file),
#   - and every Ray process of the job carries MOAA_RAY_CLUSTER=<tag> in its environment, so
#     cleanup-node finds exactly this job's leftovers (never another job's or user's).
# Resources are explicit (never Ray's guess from the whole node): --num-cpus from
# RAY_NUM_CPUS or the step's SLURM_CPUS_PER_TASK / SLURM_CPUS_ON_NODE, --num-gpus from
# RAY_NUM_GPUS or SLURM_GPUS_ON_NODE / CUDA_VISIBLE_DEVICES, and with --mem the object store
# takes 30% of the allocation (RAY_OBJECT_STORE_MEMORY in bytes overrides).

ray_job_tag() { echo "${RAY_JOB_TAG:-${SLURM_JOB_ID:?not inside a Slurm job: set RAY_JOB_TAG}}"; }
ray_tmp_dir() { echo "${RAY_TMP:-/tmp/ray_$(ray_job_tag)}"; }

# The address Slurm reaches NODE at (NodeAddr), as an IPv4 address.
ray_node_ip() {
  local node=$1 addr
  addr=$(scontrol show node "$node" -o 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p')
  addr=${addr:-$node}
  if [[ ! $addr =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then
    addr=$(getent ahostsv4 "$addr" | awk 'NR == 1 { print $1 }')
  fi
  [ -n "$addr" ] || { echo "ray_cluster: cannot resolve an address for node $node" >&2; return 1; }
  echo "$addr"
}

# First block of 1000 ports, starting at the job's own, with none of them bound on IP.
ray_pick_port_base() {
  local ip=$1 tag=$2
  "${MOAA_PYTHON:-python}" - "$ip" "$tag" <<'PY'
import socket, sys, zlib

ip, tag = sys.argv[1], sys.argv[2]
slot = int(tag) if tag.isdigit() else zlib.crc32(tag.encode())  # Slurm job ids are numbers

def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True

for step in range(40):
    base = 20000 + 1000 * ((slot + step) % 40)
    if all(free(p) for p in range(base, base + 1000)):
        print(base)
        break
else:
    sys.exit(f"ray_cluster: no free block of 1000 ports in 20000-59999 on {ip}")
PY
}

# Token authentication with a fresh token for this job (Ray 2.60 reads RAY_AUTH_TOKEN).
ray_enable_token_auth() {
  export RAY_AUTH_MODE=token
  RAY_AUTH_TOKEN=$("${MOAA_PYTHON:-python}" -c 'import secrets; print(secrets.token_hex(32))')
  export RAY_AUTH_TOKEN
  unset RAY_AUTH_TOKEN_PATH
}

ray_num_cpus() {
  echo "${RAY_NUM_CPUS:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:?no CPU count: set RAY_NUM_CPUS}}}"
}

ray_num_gpus() {
  if [ -n "${RAY_NUM_GPUS:-}" ]; then
    echo "$RAY_NUM_GPUS"
  elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
    echo "$SLURM_GPUS_ON_NODE"
  elif [[ ${CUDA_VISIBLE_DEVICES:-} =~ ^[0-9a-zA-Z-]+(,[0-9a-zA-Z-]+)*$ &&
    $CUDA_VISIBLE_DEVICES != NoDevFiles ]]; then
    awk -F, '{ print NF }' <<<"$CUDA_VISIBLE_DEVICES"
  else
    echo 0
  fi
}

# `ray start` options every node of the job shares (ports, temp dir, resources).
ray_node_args() {
  local base=${RAY_PORT_BASE:?RAY_PORT_BASE not set} args
  args=(
    --temp-dir "$(ray_tmp_dir)"
    --num-cpus "$(ray_num_cpus)"
    --num-gpus "$(ray_num_gpus)"
    --node-manager-port $((base + 3))
    --object-manager-port $((base + 4))
    --dashboard-agent-listen-port $((base + 5))
    --dashboard-agent-grpc-port $((base + 6))
    --runtime-env-agent-port $((base + 7))
    --metrics-export-port $((base + 8))
    --min-worker-port $((base + 100))
    --max-worker-port $((base + 999))
    --disable-usage-stats
  )
  if [ -n "${RAY_OBJECT_STORE_MEMORY:-}" ]; then
    args+=(--object-store-memory "$RAY_OBJECT_STORE_MEMORY")
  elif [ -n "${SLURM_MEM_PER_NODE:-}" ] && [ "$SLURM_MEM_PER_NODE" -gt 0 ] 2>/dev/null; then
    args+=(--object-store-memory $((SLURM_MEM_PER_NODE * 1024 * 1024 * 3 / 10)))
  fi
  printf '%s\n' "${args[@]}"
}

# Runs `ray start --block` in place of this shell: the srun step then is the Ray node, and
# SIGTERM to the step (scancel, or moaa.sbatch's stop) makes Ray stop its own processes.
_ray_exec_start() {
  local args
  mapfile -t args < <(ray_node_args) || return 1
  # no drain on SIGTERM (Ray's default waits up to 30 s): Slurm signals every process of the
  # step at once, GCS included, so there is nothing left to drain through, and a batch job
  # has no load balancer to drain anyway
  export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
  MOAA_RAY_CLUSTER=$(ray_job_tag) exec "${RAY:-ray}" start --block "$@" "${args[@]}"
}

ray_start_head() {
  local ip=${1:?usage: start-head IP} base=${RAY_PORT_BASE:?RAY_PORT_BASE not set}
  if [[ $ip == 127.* ]]; then
    # Ray swaps a loopback --node-ip-address for the host's outward address unless it runs
    # as a single-host cluster; a loopback head cannot take other hosts' workers anyway
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  fi
  _ray_exec_start --head --node-ip-address "$ip" --port "$base" \
    --include-dashboard true --dashboard-host "$ip" --dashboard-port $((base + 1)) \
    --ray-client-server-port $((base + 2))
}

ray_start_worker() {
  local gcs=${1:?usage: start-worker GCS_ADDRESS} ip
  ip=${RAY_NODE_IP:-$(ray_node_ip "${SLURMD_NODENAME:-$(hostname -s)}")} || return 1
  _ray_exec_start --address "$gcs" --node-ip-address "$ip"
}

# Number of alive nodes in the cluster at GCS_ADDRESS (0 while it does not answer): the
# `node_...` lines under "Active:" (and "Idle:", which the v2 autoscaler lists apart).
ray_active_nodes() {
  { "${RAY:-ray}" status --address "$1" 2>/dev/null || true; } |
    awk '/^(Active|Idle):/ { on = 1; next } /^[A-Z][A-Za-z ]*:/ { on = 0 }
         on && /node_/ { n++ } END { print n + 0 }'
}

# Waits until GCS_ADDRESS reports N alive nodes; gives up after TIMEOUT s or when one of
# the PIDS (the srun steps running the nodes) has exited.
ray_wait_nodes() {
  local gcs=$1 want=$2 timeout=$3 pid have=0 t0=$SECONDS
  shift 3
  while ((SECONDS - t0 < timeout)); do
    have=$(ray_active_nodes "$gcs")
    ((have >= want)) && return 0
    for pid in "$@"; do
      kill -0 "$pid" 2>/dev/null || {
        echo "ray_cluster: a Ray node step exited before the cluster was up ($have/$want nodes)" >&2
        return 1
      }
    done
    sleep 2
  done
  echo "ray_cluster: $have/$want nodes after ${timeout}s" >&2
  return 1
}

# PIDs of this job's Ray processes on this node (those with MOAA_RAY_CLUSTER=<tag>).
ray_job_pids() {
  local tag f
  tag=$(ray_job_tag)
  for f in /proc/[0-9]*/environ; do
    { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qx "MOAA_RAY_CLUSTER=$tag" && basename "$(dirname "$f")"
  done
  return 0
}

# Ends what is left of this job's Ray on this node (TERM, then KILL after 10 s) and with
# --rm deletes its temp dir. Prints what it had to kill: after a clean stop, nothing.
ray_cleanup_node() {
  local pids
  mapfile -t pids < <(ray_job_pids)
  if [ "${#pids[@]}" -gt 0 ]; then
    echo "ray_cluster: $(hostname -s): ending leftover Ray processes: ${pids[*]}" >&2
    kill -TERM "${pids[@]}" 2>/dev/null
    for _ in $(seq 10); do
      mapfile -t pids < <(ray_job_pids)
      [ "${#pids[@]}" = 0 ] && break
      sleep 1
    done
    [ "${#pids[@]}" -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null
  fi
  if [ "${1:-}" = --rm ]; then rm -rf "$(ray_tmp_dir)"; fi
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  cmd=${1:-}
  shift || true
  case $cmd in
    start-head) ray_start_head "$@" ;;
    start-worker) ray_start_worker "$@" ;;
    cleanup-node) ray_cleanup_node "$@" ;;
    *)
      echo "usage: $0 start-head IP | start-worker GCS_ADDRESS | cleanup-node [--rm]" >&2
      exit 2
      ;;
  esac
fi
