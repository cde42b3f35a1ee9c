#!/usr/bin/env bash
# The ceiling: how many provisioned volumes per second this API server accepts, counting only
# the writes one volume needs whoever provisions it: the PV created (the provisioner), the claim
# bound and its status set Bound, the PV's status set Bound (kube-controller-manager's binder).
# kube-controller-manager is stopped meanwhile (it would race for the same bindings) and started
# again after. Every throughput figure of the other benchmarks is also shown as a fraction of
# this one (`e2e/bench/run`).
#
#   e2e/bench/ceiling.sh [N] [OUT.json]
#       N       volumes (default 1000)
#       OUT     the JSON report (default $BENCH_DIR/ceiling.json)
#
# Environment: WRITERS (parallel clients, default 16), BENCH_DIR, BENCH_*_PORT, OURS_BIN.
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-1000}
bench_env bench-ceiling
OUT=${2:-$E2E_DIR/ceiling.json}
WRITERS=${WRITERS:-16}
bench_cluster
NS=bench-ceiling
kubectl_ create namespace "$NS" >/dev/null

stop_bg kube-controller-manager
line=$(python3 - "$KUBECONFIG_FILE" "$NS" "$DRIVER_NAME" "$N" "$WRITERS" <<'PY'
import json, sys, time
from kubeapi import Api

kubeconfig, ns, driver, n, writers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
api = Api(kubeconfig)
call = api.call

def parallel(fn, items):
    api.parallel(fn, items, writers)

claims = {}
def make_claim(c, i):
    pvc = call(c, "POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"claim-{i}", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ceiling",
                 "resources": {"requests": {"storage": "1Gi"}}}})
    claims[i] = pvc
parallel(make_claim, range(n))  # not counted: the claims exist before any provisioner acts

def provision(c, i):
    pvc = claims[i]
    name = f"pv-ceiling-{i}"
    pv = call(c, "POST", "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                 "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "ceiling",
                 "csi": {"driver": driver, "volumeHandle": f"ceiling-{i}"},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns,
                              "name": pvc["metadata"]["name"], "uid": pvc["metadata"]["uid"]}}})
    pvc["spec"]["volumeName"] = name
    pvc["metadata"].setdefault("annotations", {}).update({
        "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"})
    pvc = call(c, "PUT", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{pvc['metadata']['name']}", pvc)
    pvc["status"] = {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
    call(c, "PUT", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{pvc['metadata']['name']}/status", pvc)
    pv["status"] = {"phase": "Bound"}
    call(c, "PUT", f"/api/v1/persistentvolumes/{name}/status", pv)

t0 = time.monotonic()
parallel(provision, range(n))
t = time.monotonic() - t0
print(json.dumps({"volumes": n, "writers": writers, "writes_per_volume": 4, "seconds": round(t, 2),
                  "volumes_per_s": round(n / t, 1), "writes_per_s": round(4 * n / t, 1)}))
PY
) || die "the ceiling run did not complete"
# kube-controller-manager again, for whatever runs next on this cluster.
"$CLUSTER" up >/dev/null

mkdir -p "$(dirname "$OUT")"
python3 - "$line" "$OUT" <<'PY'
import json, sys
from kubeapi import machine
run, out = json.loads(sys.argv[1]), sys.argv[2]
json.dump({"scenario": "ceiling", **run, "machine": machine()}, open(out, "w"), indent=2)
print(f"ceiling: {run['volumes_per_s']} volumes/s ({run['writes_per_s']} writes/s, "
      f"{run['writers']} writers, {run['volumes']} volumes in {run['seconds']} s)")
print(f"report: {out}")
PY
