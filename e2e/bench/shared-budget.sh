#!/usr/bin/env bash
# One controller's request while another has a backlog on the shared API budget: ours runs the
# provisioner and the attacher at a small budget (default QPS 5, burst 10); N claims are created
# at once (a backlog of about three requests per claim for the provisioner's 100 workers), then
# one VolumeAttachment of a volume provisioned before; reports how long it took to be attached
# and how many of the N PVs existed by then. With one queue for every controller's requests the
# attachment waited behind the provisioner's outstanding requests; with the controllers taking
# turns on the budget it waits for a token or two.
#
#   e2e/bench/shared-budget.sh [N] [OUT.json]
#       N       claims of the backlog (default 300)
#       OUT     the JSON report (default $BENCH_DIR/shared-budget.json)
#
# Environment: CLIENT_QPS (default 5), CLIENT_BURST (default 10), OURS_BIN, BENCH_DIR and
# BENCH_*_PORT as api-requests.sh.
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-300}
bench_env bench-shared-budget
OUT=${2:-$E2E_DIR/shared-budget.json}
CLIENT_QPS=${CLIENT_QPS:-5} CLIENT_BURST=${CLIENT_BURST:-10}
bench_cluster
"$CLUSTER" rbac >/dev/null
ns=budget
bench_namespace "$ns"
start_bg bench-ours "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
	--controllers=provisioner,attacher --leader-election=false \
	--kube-api-qps "$CLIENT_QPS" --kube-api-burst "$CLIENT_BURST"

claim() { # NAME
	printf -- '---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: %s, namespace: %s}\nspec: {accessModes: [ReadWriteOnce], storageClassName: %s, resources: {requests: {storage: 1Gi}}}\n' "$1" "$ns" "$ns"
}

# The volume to attach, provisioned before the backlog.
claim source | kubectl_ apply -f - >/dev/null
kubectl_ -n "$ns" wait --for=jsonpath='{.status.phase}'=Bound pvc/source --timeout=120s >/dev/null
pv=$(kubectl_ -n "$ns" get pvc source -o jsonpath='{.spec.volumeName}')
node=$(kubectl_ get nodes -o jsonpath='{.items[0].metadata.name}')
# Let the budget fill up again.
sleep $((CLIENT_BURST / ${CLIENT_QPS%.*} + 1))

for ((i = 0; i < N; i++)); do claim "c$i"; done | kubectl_ apply -f - >/dev/null
start=$(date +%s.%N)
printf 'apiVersion: storage.k8s.io/v1\nkind: VolumeAttachment\nmetadata: {name: budget-probe}\nspec: {attacher: %s, nodeName: %s, source: {persistentVolumeName: %s}}\n' \
	"$DRIVER_NAME" "$node" "$pv" | kubectl_ apply -f - >/dev/null
kubectl_ wait --for=jsonpath='{.status.attached}'=true volumeattachment/budget-probe --timeout=600s >/dev/null
end=$(date +%s.%N)
pvs=$(kubectl_ get pv -o name | wc -l)
python3 - "$OUT" "$N" "$CLIENT_QPS" "$CLIENT_BURST" "$start" "$end" "$((pvs - 1))" <<'PY'
import json, sys
out, n, qps, burst, start, end, pvs = sys.argv[1:]
report = {"claims": int(n), "qps": float(qps), "burst": int(burst),
          "attached_after_s": round(float(end) - float(start), 2), "pvs_by_then": int(pvs)}
json.dump(report, open(out, "w"), indent=1)
print(f"attached after {report['attached_after_s']} s, with {pvs} of {n} PVs of the backlog made by then")
print(f"report: {out}")
PY
