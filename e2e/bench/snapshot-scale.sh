#!/usr/bin/env bash
# Snapshots at scale, upstream's snapshot-controller + csi-snapshotter vs csi-controller-manager's
# two snapshot halves: with N ready VolumeSnapshots (and their contents) already in the cluster,
# each side is started alone against the same control plane and csi-mock, and measured:
#   - cold start: the time from starting the process(es) until a VolumeSnapshot created at that
#     moment is ready (initial lists, the pass over every existing object, then the new one);
#     for ours also until /readyz answers (caches synced);
#   - warm: the time to ready of one more new snapshot once the first is ready;
#   - RSS of the process (ours) or the sum of the two (upstream), after the warm snapshot;
#   - CreateSnapshot calls on the driver (the existing snapshots must cost none).
#
#   e2e/bench/snapshot-scale.sh [N] [OUT.json]
#       N       existing snapshots (default 10000)
#       OUT     the JSON report (default $BENCH_DIR/snapshot-scale.json)
#
# Environment: RUNS (default "upstream ours"), BENCH_DIR and BENCH_*_PORT as the other
# benchmarks, OURS_BIN (default target/debug/csi-controller-manager; use a release build for
# figures). Each side runs with its own defaults (upstream: client QPS 5, burst 10; ours: 50/100).
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-10000}
bench_env bench-snapshots
OUT=${2:-$E2E_DIR/snapshot-scale.json}
RUNS=${RUNS:-upstream ours}
bench_cluster
ensure_built snapshotter
SNAP_DIR=$(comp_dir snapshotter)
kubectl_ apply --server-side -f "$SNAP_DIR/crd/" >/dev/null
kubectl_ wait --for=condition=Established --timeout=60s -f "$SNAP_DIR/crd/" >/dev/null
NS=bench-snap
bench_namespace "$NS"
kubectl_ apply -f - >/dev/null <<YAML
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: bench}
driver: $DRIVER_NAME
deletionPolicy: Delete
YAML

# A source claim, provisioned by ours (the provisioner only).
start_bg bench-provisioner "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
	--controllers=provisioner
kubectl_ apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: src, namespace: $NS}
spec: {accessModes: [ReadWriteOnce], storageClassName: $NS, resources: {requests: {storage: 1Gi}}}
YAML
kubectl_ -n "$NS" wait --for=jsonpath='{.status.phase}'=Bound pvc/src --timeout=60s >/dev/null
stop_bg bench-provisioner

# The API server's address and token, for the Python helpers.
python_env() { echo "$KUBECONFIG_FILE" "$NS" "$DRIVER_NAME"; }

log "seeding $N ready snapshots and contents"
python3 - $(python_env) "$N" <<'PY'
import sys, time
from kubeapi import Api
kubeconfig, ns, driver, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
api = Api(kubeconfig, timeout=120)
call = api.call
G = "/apis/snapshot.storage.k8s.io/v1"
now = time.time()
stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
def seed(c, i):
    name = f"snap-{i}"
    vs = call(c, "POST", f"{G}/namespaces/{ns}/volumesnapshots", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "finalizers": [
            "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection",
            "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"]},
        "spec": {"volumeSnapshotClassName": "bench", "source": {"persistentVolumeClaimName": "src"}}})
    uid = vs["metadata"]["uid"]
    content = f"snapcontent-{uid}"
    call(c, "PATCH", f"{G}/namespaces/{ns}/volumesnapshots/{name}/status", {"status": {
        "boundVolumeSnapshotContentName": content, "creationTime": stamp,
        "readyToUse": True, "restoreSize": "1Gi"}}, "application/merge-patch+json")
    call(c, "POST", f"{G}/volumesnapshotcontents", {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": content, "finalizers": [
            "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"]},
        "spec": {"volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                       "name": name, "namespace": ns, "uid": uid},
                 "deletionPolicy": "Delete", "driver": driver, "volumeSnapshotClassName": "bench",
                 "source": {"volumeHandle": f"vol-seed-{i}"}}})
    call(c, "PATCH", f"{G}/volumesnapshotcontents/{content}/status", {"status": {
        "snapshotHandle": f"snap-seed-{i}", "creationTime": int(now * 1e9),
        "readyToUse": True, "restoreSize": 1 << 30}}, "application/merge-patch+json")
t0 = time.monotonic()
api.parallel(seed, range(n))
print(f"seeded {n} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
PY

# rss PID...: the sum of VmRSS of the processes, in MiB.
rss() {
	local total=0 pid kb
	for pid in "$@"; do
		kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
		total=$((total + kb))
	done
	echo $((total / 1024))
}

# new_snapshot NAME: creates VolumeSnapshot NAME of the source claim, prints seconds to ready.
new_snapshot() {
	python3 - $(python_env) "$1" <<'PY'
import json, sys, time
from kubeapi import Api
kubeconfig, ns, driver, name = sys.argv[1:5]
api = Api(kubeconfig, timeout=1200)
c = api.conn()
G = f"/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots"
t0 = time.monotonic()
api.call(c, "POST", G, {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
    "metadata": {"name": name}, "spec": {"volumeSnapshotClassName": "bench",
    "source": {"persistentVolumeClaimName": "src"}}})
while time.monotonic() - t0 < 1200:
    vs = api.call(c, "GET", f"{G}/{name}")
    if (vs.get("status") or {}).get("readyToUse") is True:
        print(f"{time.monotonic() - t0:.2f}")
        sys.exit(0)
    time.sleep(0.1)
raise SystemExit(f"{name} not ready after 1200 s")
PY
}

RESULTS=$E2E_DIR/snapshot-scale.runs
: >"$RESULTS"
for side in $RUNS; do
	pids=()
	ready_s=null
	creates_before=$(curl -fsS "http://127.0.0.1:$CSI_MOCK_CONTROL_PORT/calls" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("CreateSnapshot", 0))')
	case $side in
	upstream)
		start_bg bench-snapshot-controller "$SNAP_DIR/snapshot-controller" --kubeconfig="$KUBECONFIG_FILE" \
			--leader-election=false -v=1
		start_bg bench-csi-snapshotter "$SNAP_DIR/csi-snapshotter" --kubeconfig="$KUBECONFIG_FILE" \
			--csi-address="$CSI_SOCKET" --leader-election=false -v=1
		cold=$(new_snapshot "cold-$side")
		pids=("$(cat "$E2E_DIR/pids/bench-snapshot-controller.pid")" "$(cat "$E2E_DIR/pids/bench-csi-snapshotter.pid")")
		;;
	ours)
		port=$((SIDECAR_PORT_BASE + 9))
		start_bg bench-ours "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
			--controllers=snapshotter,snapshot-controller --http-endpoint "127.0.0.1:$port"
		t0=$(date +%s.%N)
		cold_file=$(mktemp)
		new_snapshot "cold-$side" >"$cold_file" &
		cold_pid=$!
		until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.05; done
		ready_s=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
		wait "$cold_pid"
		cold=$(cat "$cold_file")
		rm -f "$cold_file"
		pids=("$(cat "$E2E_DIR/pids/bench-ours.pid")")
		;;
	*) die "unknown side '$side' in RUNS (upstream or ours)" ;;
	esac
	warm=$(new_snapshot "warm-$side")
	sleep 2
	mib=$(rss "${pids[@]}")
	creates=$(curl -fsS "http://127.0.0.1:$CSI_MOCK_CONTROL_PORT/calls" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("CreateSnapshot", 0))')
	bench_stop_own
	kubectl_ -n "$NS" delete volumesnapshot "cold-$side" "warm-$side" --wait=false >/dev/null
	line=$(printf '{"side": "%s", "existing": %s, "cold_ready_s": %s, "caches_synced_s": %s, "warm_ready_s": %s, "rss_mib": %s, "create_snapshot_calls": %s}' \
		"$side" "$N" "$cold" "$ready_s" "$warm" "$mib" "$((creates - creates_before))")
	echo "$line" | tee -a "$RESULTS" >&2
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$N" <<'PY'
import json, sys
from kubeapi import machine
results, out, n = sys.argv[1:4]
runs = [json.loads(l) for l in open(results) if l.strip()]
json.dump({"scenario": "snapshot-scale", "existing_snapshots": int(n), "driver": "csi-mock",
           "machine": machine(), "runs": runs}, open(out, "w"), indent=2)
print(f"{'side':9s} {'cold ready':>10s} {'synced':>7s} {'warm ready':>10s} {'RSS MiB':>8s} {'CreateSnapshot':>14s}")
for r in runs:
    synced = "-" if r["caches_synced_s"] is None else f"{r['caches_synced_s']:.1f}s"
    print(f"{r['side']:9s} {r['cold_ready_s']:9.1f}s {synced:>7s} {r['warm_ready_s']:9.2f}s {r['rss_mib']:8d} {r['create_snapshot_calls']:14d}")
print(f"report: {out}")
PY
