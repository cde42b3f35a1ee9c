#!/usr/bin/env bash
# Soak: claims living their whole lives (created, expanded, snapshotted, attached, detached, the
# snapshot and the claim deleted; 10 at a time) against one csi-controller-manager running all
# five controllers, for an hour by default, on a local control plane of its own. The manager's
# resident memory, open file descriptors and threads are sampled every 10 s; the run fails if
# they grow (the last fifth of the samples against the first fifth after warm-up; margins in
# e2e/tests/soak.rs) or if the driver ends with anything the cluster does not name.
#
#   e2e/bench/soak.sh [SECONDS] [REPORT.json]    (default 3600, $E2E_CACHE/bench-soak/soak.json)
#   OURS_BIN=<release build>/csi-controller-manager e2e/bench/soak.sh
#
# The test command runs the same test for 40 s (no flatness check below 10 minutes).
set -euo pipefail

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

SECONDS_=${1:-3600}
export E2E_DIR=${BENCH_DIR:-$E2E_CACHE/bench-soak}
REPORT=${2:-$E2E_DIR/soak.json}
# Ports of its own, so that a test cluster may run beside it.
export ETCD_PORT=${BENCH_ETCD_PORT:-26790} ETCD_PEER_PORT=${BENCH_ETCD_PEER_PORT:-26800}
export APISERVER_PORT=${BENCH_APISERVER_PORT:-39443} KCM_PORT=${BENCH_KCM_PORT:-33257}
export SCHEDULER_PORT=${BENCH_SCHEDULER_PORT:-33259} KWOK_PORT=${BENCH_KWOK_PORT:-33247}
export SIDECAR_PORT_BASE=${BENCH_SIDECAR_PORT_BASE:-33280} CSI_MOCK_CONTROL_PORT=${BENCH_CSI_MOCK_CONTROL_PORT:-33290}
CLUSTER=$E2E_SRC/cluster
export OURS_BIN=${OURS_BIN:-$REPO_ROOT/target/debug/csi-controller-manager}
[[ -x $OURS_BIN ]] || die "$OURS_BIN not found: build it with 'cargo build -p controller-manager'"

trap '"$CLUSTER" down >/dev/null 2>&1 || true' EXIT
"$CLUSTER" down >/dev/null 2>&1 || true
"$CLUSTER" up
# The snapshot CRDs come with the controllers; the test runs a manager of its own.
"$CLUSTER" driver mock
"$CLUSTER" sidecars ours
"$CLUSTER" sidecars stop
eval "$("$CLUSTER" env)"
mkdir -p "$(dirname "$REPORT")"
log "soak: ${SECONDS_}s with $OURS_BIN; samples to $REPORT"
cd "$REPO_ROOT"
SOAK_SECS=$SECONDS_ SOAK_REPORT=$REPORT cargo test --locked -p e2e --features cluster \
	--test soak -- --nocapture
