#!/usr/bin/env bash
# API requests per provisioned volume and per attachment, upstream external-provisioner and
# external-attacher vs csi-controller-manager: each runs alone against the same local control
# plane and csi-mock and its requests are counted from the API server's audit log by User-Agent.
#   - provision: N volumes provisioned and deleted (Immediate binding, Delete policy;
#     kube-controller-manager's binding work is the same for both and not counted);
#   - attach: N VolumeAttachments (of volumes provisioned beforehand) attached, then deleted
#     and detached.
# Start-up (initial lists, watches) happens before the counting window.
#
#   e2e/bench/api-requests.sh [N] [OUT.json]   (default 50; runs in its own run dir and ports)
#
# Prints a table per controller and operation: requests by verb and resource, total, per
# object; writes the JSON report (default $BENCH_DIR/api-requests.json).
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-50}
bench_env bench-api
OUT=${2:-$E2E_DIR/api-requests.json}
RESULTS=$E2E_DIR/api-requests.runs
export APISERVER_AUDIT_LOG=$E2E_DIR/audit.log
# The API server must start with the audit flags (bench_cluster starts it afresh).
rm -f "$APISERVER_AUDIT_LOG"
bench_cluster
: >"$RESULTS"

count_driver_pvs() {
	kubectl_ get pv -o jsonpath='{range .items[*]}{.spec.csi.driver}{"\n"}{end}' | grep -cx "$DRIVER_NAME" || true
}

# run MODE: provision and delete N volumes with one controller; print its request counts.
run() {
	local mode=$1 ns="bench-$1" agent
	case $mode in
	upstream)
		agent=csi-provisioner
		start_bg "bench-$mode" "$(bin_path provisioner csi-provisioner)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=2
		;;
	ours)
		agent=csi-controller-manager
		start_bg "bench-$mode" "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
			--controllers=provisioner
		;;
	esac
	sleep 5 # start-up: caches synced
	is_running "bench-$mode" || fail_component "bench-$mode" "the $mode provisioner did not start"
	local from
	from=$(wc -l <"$APISERVER_AUDIT_LOG")
	bench_namespace "$ns"
	{
		for ((i = 0; i < N; i++)); do
			cat <<YAML
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: claim-$i, namespace: $ns}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: $ns
  resources: {requests: {storage: 1Gi}}
YAML
		done
	} | kubectl_ apply -f - >/dev/null
	local deadline=$(($(now_s) + 300)) bound
	while :; do
		bound=$(kubectl_ get pvc -n "$ns" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Bound$' || true)
		((bound == N)) && break
		(($(now_s) < deadline)) || die "$mode: only $bound of $N claims bound after 300 s"
		sleep 1
	done
	kubectl_ delete pvc -n "$ns" --all --wait=false >/dev/null
	while (($(count_driver_pvs) > 0)); do
		(($(now_s) < deadline)) || die "$mode: PVs left after 300 s"
		sleep 1
	done
	local to
	to=$(quiet_until "$agent" "$from")
	stop_bg "bench-$mode"
	kubectl_ delete storageclass "$ns" >/dev/null
	kubectl_ delete namespace "$ns" --wait=false >/dev/null
	count "$agent" "$mode" provision "$from" "$to"
}

# count AGENT MODE OPERATION FROM TO: the requests of AGENT in the audit log's lines FROM+1..TO,
# printed by verb and resource, and appended to $RESULTS.
count() {
	local agent=$1 mode=$2 operation=$3 from=$4 to=$5
	sed -n "$((from + 1)),${to}p" "$APISERVER_AUDIT_LOG" | python3 -c '
import collections, json, sys
agent, mode, n, results, operation = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
unit = "volume" if operation == "provision" else "attachment"
counts = collections.Counter()
agents = set()
for line in sys.stdin:
    e = json.loads(line)
    ua = e.get("userAgent", "")
    if not ua.startswith(agent):
        continue
    agents.add(ua)
    ref = e.get("objectRef", {})
    res = ref.get("resource", "?") + ("/" + ref["subresource"] if ref.get("subresource") else "")
    counts[(e.get("verb", "?"), res)] += 1
total = sum(counts.values())
print(f"== {mode}, {operation}: {total} requests for {n} {unit}s = {total / n:.2f} per {unit}  (User-Agent: {sorted(agents)})")
for (verb, res), c in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"   {c:6d}  {c / n:6.2f}/{unit}  {verb:8s} {res}")
with open(results, "a") as f:
    f.write(json.dumps({"side": mode, "operation": operation, "objects": n, "requests": total,
                        "per_object": round(total / n, 2),
                        "by_verb_resource": {f"{v} {r}": c for (v, r), c in sorted(counts.items())}}) + "\n")
' "$agent" "$mode" "$N" "$RESULTS" "$operation"
}

# quiet_until AGENT FROM: waits until AGENT has made no request for 5 s (late finalizer removals,
# Events queued behind the client's rate limit); prints the audit log's line count then.
quiet_until() {
	local agent=$1 from=$2 seen=-1 now_seen
	while :; do
		now_seen=$(tail -n "+$((from + 1))" "$APISERVER_AUDIT_LOG" | grep -c "\"userAgent\":\"$agent" || true)
		((now_seen == seen)) && break
		seen=$now_seen
		sleep 5
	done
	wc -l <"$APISERVER_AUDIT_LOG"
}

# run_attach MODE: attach and detach N volumes (provisioned beforehand) with one attacher.
run_attach() {
	local mode=$1 agent from to i pvs vas
	case $mode in
	upstream)
		agent=csi-attacher
		start_bg "bench-attach-$mode" "$(bin_path attacher csi-attacher)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=2
		;;
	ours)
		agent=csi-controller-manager
		start_bg "bench-attach-$mode" "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
			--controllers=attacher
		;;
	esac
	sleep 5 # start-up: caches synced
	is_running "bench-attach-$mode" || fail_component "bench-attach-$mode" "the $mode attacher did not start"
	from=$(wc -l <"$APISERVER_AUDIT_LOG")
	mapfile -t pvs < <(kubectl_ get pv -o jsonpath='{range .items[?(@.spec.claimRef.namespace=="bench-volumes")]}{.metadata.name}{"\n"}{end}')
	{
		for ((i = 0; i < N; i++)); do
			printf -- '---\napiVersion: storage.k8s.io/v1\nkind: VolumeAttachment\nmetadata: {name: bench-%s-%d}\n' "$mode" "$i"
			printf 'spec: {attacher: %s, nodeName: %s-%d, source: {persistentVolumeName: %s}}\n' "$DRIVER_NAME" kwok-node $((i % 3)) "${pvs[i]}"
		done
	} | kubectl_ apply -f - >/dev/null
	local deadline=$(($(now_s) + 300)) attached
	while :; do
		attached=$(kubectl_ get volumeattachment -o jsonpath='{range .items[*]}{.metadata.name} {.status.attached}{"\n"}{end}' | grep -c "^bench-$mode-.* true$" || true)
		((attached == N)) && break
		(($(now_s) < deadline)) || die "$mode: only $attached of $N attached after 300 s"
		sleep 1
	done
	mapfile -t vas < <(kubectl_ get volumeattachment -o name | grep "/bench-$mode-")
	kubectl_ delete --wait=false "${vas[@]}" >/dev/null
	while kubectl_ get volumeattachment -o name | grep -q "/bench-$mode-"; do
		(($(now_s) < deadline)) || die "$mode: attachments left after 300 s"
		sleep 1
	done
	to=$(quiet_until "$agent" "$from")
	stop_bg "bench-attach-$mode"
	count "$agent" "$mode" attach "$from" "$to"
}


run upstream
run ours
# The attachments' volumes, provisioned by ours outside the counting windows.
ensure_built attacher
bench_namespace bench-volumes
start_bg bench-volumes "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" --controllers=provisioner
for ((i = 0; i < N; i++)); do
	printf -- '---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: v-%d, namespace: bench-volumes}\n' "$i"
	printf 'spec: {accessModes: [ReadWriteOnce], storageClassName: bench-volumes, resources: {requests: {storage: 1Gi}}}\n'
done | kubectl_ apply -f - >/dev/null
kubectl_ -n bench-volumes wait --for=jsonpath='{.status.phase}'=Bound pvc --all --timeout=300s >/dev/null
stop_bg bench-volumes
run_attach upstream
run_attach ours
mkdir -p "$(dirname "$OUT")"
python3 -c 'import json, sys; json.dump({"scenario": "api-requests", "operations": "provision and delete; attach and detach", "runs": [json.loads(l) for l in open(sys.argv[1]) if l.strip()]}, open(sys.argv[2], "w"), indent=2)' "$RESULTS" "$OUT"
echo "report: $OUT"
