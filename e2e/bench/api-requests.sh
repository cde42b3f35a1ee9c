#!/usr/bin/env bash
# API requests per provisioned volume, upstream external-provisioner vs csi-controller-manager:
# each runs alone against the same local control plane and csi-mock, provisions and deletes N
# volumes (Immediate binding, Delete policy), and its requests are counted from the API
# server's audit log by User-Agent (kube-controller-manager's binding work is the same for both
# and not counted). Start-up (initial lists, watches) happens before the counting window.
#
#   e2e/bench/api-requests.sh [N] [OUT.json]   (default 50; runs in its own run dir and ports)
#
# Prints a table per controller: requests by verb and resource, total, per volume; writes the
# JSON report (default $BENCH_DIR/api-requests.json).
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
	# Late requests (finalizer removals, events queued behind the client's rate limit): wait
	# until the controller has been silent for 5 s.
	local seen=-1 now_seen to
	while :; do
		now_seen=$(tail -n "+$((from + 1))" "$APISERVER_AUDIT_LOG" | grep -c "\"userAgent\":\"$agent" || true)
		((now_seen == seen)) && break
		seen=$now_seen
		sleep 5
	done
	to=$(wc -l <"$APISERVER_AUDIT_LOG")
	stop_bg "bench-$mode"
	kubectl_ delete storageclass "$ns" >/dev/null
	kubectl_ delete namespace "$ns" --wait=false >/dev/null
	sed -n "$((from + 1)),${to}p" "$APISERVER_AUDIT_LOG" | python3 -c '
import collections, json, sys
agent, mode, n, results = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
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
print(f"== {mode}: {total} requests for {n} volumes = {total / n:.2f} per volume  (User-Agent: {sorted(agents)})")
for (verb, res), c in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"   {c:6d}  {c / n:6.2f}/volume  {verb:8s} {res}")
with open(results, "a") as f:
    f.write(json.dumps({"side": mode, "volumes": n, "requests": total,
                        "per_volume": round(total / n, 2),
                        "by_verb_resource": {f"{v} {r}": c for (v, r), c in sorted(counts.items())}}) + "\n")
' "$agent" "$mode" "$N" "$RESULTS"
}

run upstream
run ours
mkdir -p "$(dirname "$OUT")"
python3 -c 'import json, sys; json.dump({"scenario": "api-requests", "operation": "provision and delete", "runs": [json.loads(l) for l in open(sys.argv[1]) if l.strip()]}, open(sys.argv[2], "w"), indent=2)' "$RESULTS" "$OUT"
echo "report: $OUT"
