#!/usr/bin/env bash
# Memory, csi-controller-manager (provisioner, attacher, resizer, snapshotter and the snapshot
# controller in one process) vs the sum of the upstream processes it replaces (csi-provisioner,
# csi-attacher, csi-resizer, csi-snapshotter, snapshot-controller), each side alone against the
# same control plane and csi-mock:
#   - idle: an empty cluster, after start-up;
#   - loaded: N bound claims and volumes, half of them another driver's, and an attached
#     VolumeAttachment for each volume (its driver's); RSS after the caches synced and the start-up passes settled
#     (peak: the highest RSS sampled meanwhile; steady: at the end).
# Reports bytes per object and a projection to 100,000 objects (linear in the loaded minus idle).
#
#   e2e/bench/memory.sh [N] [OUT.json]
#       N       claims/volumes (default 10000)
#       OUT     the JSON report (default $BENCH_DIR/memory.json)
#
# Environment: RUNS (default "upstream ours"), SETTLE (seconds after start-up, default 30),
# BENCH_DIR, BENCH_*_PORT, OURS_BIN (a release build for figures).
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-10000}
bench_env bench-memory
OUT=${2:-$E2E_DIR/memory.json}
RUNS=${RUNS:-upstream ours}
SETTLE=${SETTLE:-30}
bench_cluster
ensure_built attacher resizer snapshotter
SNAP_DIR=$(comp_dir snapshotter)
kubectl_ apply --server-side -f "$SNAP_DIR/crd/" >/dev/null
kubectl_ wait --for=condition=Established --timeout=60s -f "$SNAP_DIR/crd/" >/dev/null
RESULTS=$E2E_DIR/memory.runs
: >"$RESULTS"

# start SIDE: the side's processes; prints their pid files' names.
start_side() {
	case $1 in
	upstream)
		start_bg bench-provisioner "$(bin_path provisioner csi-provisioner)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1
		start_bg bench-attacher "$(bin_path attacher csi-attacher)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1
		start_bg bench-resizer "$(bin_path resizer csi-resizer)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1
		start_bg bench-csi-snapshotter "$SNAP_DIR/csi-snapshotter" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1
		start_bg bench-snapshot-controller "$SNAP_DIR/snapshot-controller" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1
		echo bench-provisioner bench-attacher bench-resizer bench-csi-snapshotter bench-snapshot-controller
		;;
	ours)
		start_bg bench-ours "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
			--controllers=provisioner,attacher,resizer,snapshotter,snapshot-controller
		echo bench-ours
		;;
	*) die "unknown side '$1' in RUNS (upstream or ours)" ;;
	esac
}

# measure PHASE SIDE: samples the side's RSS (MiB, summed) every second for SETTLE seconds;
# prints "peak steady".
measure() {
	local names pids=() n peak=0 now=0 i
	names=$(start_side "$2")
	for n in $names; do pids+=("$(cat "$E2E_DIR/pids/$n.pid")"); done
	for ((i = 0; i < SETTLE; i++)); do
		sleep 1
		now=0
		for p in "${pids[@]}"; do
			[[ -r /proc/$p/status ]] || fail_component "${names%% *}" "$2: a process exited during the $1 phase"
			now=$((now + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
		done
		((now > peak)) && peak=$now
	done
	bench_stop_own
	echo "$((peak / 1024)) $((now / 1024))"
}

declare -A IDLE
for side in $RUNS; do
	measure idle "$side" >"$E2E_DIR/memory.sample" || die "$side: the idle phase failed"
	read -r peak steady <"$E2E_DIR/memory.sample"
	IDLE[$side]=$steady
	log "$side idle: peak $peak MiB, steady $steady MiB"
done

log "seeding $N bound claims, volumes and attachments (half another driver's)"
NS=bench-memory
kubectl_ create namespace "$NS" >/dev/null
# The seeding binds the claims itself, with the writes kube-controller-manager's binder would make
# (at its default client QPS of 20 the binder would take most of an hour for 10,000); the binder
# is stopped meanwhile, as it would race for the same objects, and started again after.
stop_bg kube-controller-manager
python3 - "$KUBECONFIG_FILE" "$NS" "$DRIVER_NAME" "$N" <<'PY' || die "the seeding failed"
import sys, time
from kubeapi import Api
kubeconfig, ns, driver, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
api = Api(kubeconfig, timeout=120)
call = api.call
nodes = [f"kwok-node-{k}" for k in range(3)]
BOUND = {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}
def seed(c, i):
    mine = i % 2 == 0
    d = driver if mine else "other.csi.example.com"
    claims = f"/api/v1/namespaces/{ns}/persistentvolumeclaims"
    claim = call(c, "POST", claims, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"claim-{i}", "namespace": ns, "labels": {"app": "bench", "index": str(i)},
                     "annotations": BOUND},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "volumeName": f"pv-memory-{i}", "resources": {"requests": {"storage": "1Gi"}}}})
    claim["status"] = {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
    call(c, "PUT", f"{claims}/claim-{i}/status", claim)
    pv = call(c, "POST", "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pv-memory-{i}", "annotations": {"pv.kubernetes.io/provisioned-by": d}},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "csi": {"driver": d, "volumeHandle": f"memory-{i}", "fsType": "ext4"},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns,
                              "name": f"claim-{i}", "uid": claim["metadata"]["uid"]}}})
    pv["status"] = {"phase": "Bound"}
    call(c, "PUT", f"/api/v1/persistentvolumes/pv-memory-{i}/status", pv)
    va = call(c, "POST", "/apis/storage.k8s.io/v1/volumeattachments", {
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": f"va-memory-{i}"},
        "spec": {"attacher": d, "nodeName": nodes[i % 3],
                 "source": {"persistentVolumeName": f"pv-memory-{i}"}}})
    va["status"] = {"attached": True}
    call(c, "PUT", f"/apis/storage.k8s.io/v1/volumeattachments/va-memory-{i}/status", va)
t0 = time.monotonic()
api.parallel(seed, range(n), writers=16)
print(f"seeded {n} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
PY
"$CLUSTER" up >/dev/null
# Every claim is Bound, and stays so with the binder back (it finds nothing to do).
sleep 10
bound=$(kubectl_ -n "$NS" get pvc -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Bound || true)
[[ $bound == "$N" ]] || die "$bound of the $N seeded claims are Bound"

for side in $RUNS; do
	measure loaded "$side" >"$E2E_DIR/memory.sample" || die "$side: the loaded phase failed"
	read -r peak steady <"$E2E_DIR/memory.sample"
	log "$side loaded: peak $peak MiB, steady $steady MiB"
	printf '{"side": "%s", "idle_mib": %s, "loaded_peak_mib": %s, "loaded_steady_mib": %s}\n' \
		"$side" "${IDLE[$side]}" "$peak" "$steady" >>"$RESULTS"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$N" <<'PY'
import json, sys
from kubeapi import machine
results, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = [json.loads(l) for l in open(results) if l.strip()]
# Objects in the cluster: N claims, N volumes, N attachments (what each side keeps of another
# driver's is its own business).
objects = 3 * n
for r in runs:
    per = (r["loaded_steady_mib"] - r["idle_mib"]) * 1024 * 1024 / objects
    r["bytes_per_object"] = round(per)
    r["projected_100k_objects_mib"] = round(r["idle_mib"] + per * 100_000 / (1024 * 1024))
json.dump({"scenario": "memory", "claims": n, "volumes": n, "attachments": n,
           "another_drivers_share": 0.5, "objects": objects,
           "machine": machine(), "runs": runs}, open(out, "w"), indent=2)
print(f"{'side':9s} {'idle':>6s} {'peak':>6s} {'steady':>7s} {'B/object':>9s} {'100k objects':>13s}  (MiB)")
for r in runs:
    print(f"{r['side']:9s} {r['idle_mib']:6d} {r['loaded_peak_mib']:6d} {r['loaded_steady_mib']:7d} "
          f"{r['bytes_per_object']:9d} {r['projected_100k_objects_mib']:13d}")
print(f"report: {out}")
PY
