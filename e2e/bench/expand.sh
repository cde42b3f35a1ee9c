#!/usr/bin/env bash
# Expansion, upstream external-resizer vs csi-controller-manager's resizer: each runs alone
# against the same local control plane and csi-mock. N bound claims are provisioned once (by
# ours, the provisioner only); per run every claim is asked for 1 GiB more at once, and the time
# until every PV has the new capacity (ControllerExpandVolume done and the PV updated: the
# resizer's part; the claim's own status waits for a kubelet, which the fake nodes do not run)
# is taken, with the per-claim p50/p99.
#
#   e2e/bench/expand.sh [N] [OUT.json]
#       N       claims (default 500)
#       OUT     the JSON report (default $BENCH_DIR/expand.json)
#
# Environment: RUNS (default "upstream ours upstream:equal ours:equal"; `equal` gives both
# CLIENT_QPS/CLIENT_BURST, default 200/400, and WORKERS workers, default 10), BENCH_DIR,
# BENCH_*_PORT, OURS_BIN.
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-500}
bench_env bench-expand
OUT=${2:-$E2E_DIR/expand.json}
RUNS=${RUNS:-upstream ours upstream:equal ours:equal}
CLIENT_QPS=${CLIENT_QPS:-200} CLIENT_BURST=${CLIENT_BURST:-400} WORKERS=${WORKERS:-10}
bench_cluster
ensure_built resizer
RESULTS=$E2E_DIR/expand.runs
: >"$RESULTS"

NS=bench-expand
bench_namespace "$NS"
kubectl_ patch storageclass "$NS" --type merge -p '{"allowVolumeExpansion": true}' >/dev/null
start_bg bench-provisioner "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
	--controllers=provisioner --kube-api-qps 200 --kube-api-burst 400
{
	for ((i = 0; i < N; i++)); do
		printf -- '---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c-%d, namespace: %s}\n' "$i" "$NS"
		printf 'spec: {accessModes: [ReadWriteOnce], storageClassName: %s, resources: {requests: {storage: 1Gi}}}\n' "$NS"
	done
} | kubectl_ apply -f - >/dev/null
log "provisioning $N volumes"
deadline=$(($(now_s) + 600))
until [[ $(kubectl_ -n "$NS" get pvc -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Bound) == "$N" ]]; do
	(($(now_s) < deadline)) || die "the volumes were not provisioned in 600 s"
	sleep 2
done
stop_bg bench-provisioner

# measure kubeconfig namespace driver N GIB: every claim to GIB; prints one JSON line.
measure() {
	python3 - "$@" <<'PY'
import json, sys, threading, time
from kubeapi import Api, pct

kubeconfig, ns, driver, n, gib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
api = Api(kubeconfig)
call = api.call

want = f"{gib}Gi"
c = api.conn()
pv_of = {pvc["spec"]["volumeName"]: pvc["metadata"]["name"]
         for pvc in call(c, "GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims")["items"]}
lock = threading.Lock()
asked, resized = {}, {}
done = threading.Event()
def on_pv(kind, pv, t):
    claim = pv_of.get(pv["metadata"]["name"])
    if claim and pv["spec"].get("capacity", {}).get("storage") == want:
        with lock:
            if claim not in resized:
                resized[claim] = t
                if len(resized) == n:
                    done.set()
api.watch("/api/v1/persistentvolumes", on_pv)
def expand(cc, name):
    call(cc, "PATCH", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
         {"spec": {"resources": {"requests": {"storage": want}}}}, "application/merge-patch+json")
    with lock:
        asked[name] = time.monotonic()
claims = sorted(pv_of.values())
t0 = time.monotonic()
api.parallel(expand, claims)
if not done.wait(900):
    raise SystemExit(f"after 900 s: {len(resized)} of {n} volumes resized")
t_all = max(resized.values()) - t0
lat = [resized[k] - asked[k] for k in claims]
print(json.dumps({"claims": n, "to_gib": gib, "all_resized_s": round(t_all, 2),
                  "resized_per_s": round(n / t_all, 1),
                  "p50_s": round(pct(lat, 50), 2), "p99_s": round(pct(lat, 99), 2)}))
PY
}

gib=1
run() {
	local side=$1 mode=${2:-defaults} name flags=()
	name="bench-$side-$mode"
	gib=$((gib + 1))
	case $side in
	upstream)
		[[ $mode == equal ]] && flags=(--kube-api-qps="$CLIENT_QPS" --kube-api-burst="$CLIENT_BURST" --workers="$WORKERS")
		start_bg "$name" "$(bin_path resizer csi-resizer)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1 "${flags[@]}"
		;;
	ours)
		[[ $mode == equal ]] && flags=(--kube-api-qps "$CLIENT_QPS" --kube-api-burst "$CLIENT_BURST" --worker-threads "$WORKERS")
		start_bg "$name" "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
			--controllers=resizer "${flags[@]}"
		;;
	*) die "unknown side '$side' in RUNS (upstream or ours)" ;;
	esac
	sleep 5 # start-up: caches synced
	is_running "$name" || fail_component "$name" "the $side resizer did not start"
	local line
	line=$(measure "$KUBECONFIG_FILE" "$NS" "$DRIVER_NAME" "$N" "$gib") ||
		fail_component "$name" "$side: the run did not complete"
	stop_bg "$name"
	python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(side=sys.argv[2], settings=sys.argv[3]); print(json.dumps(r))' \
		"$line" "$side" "$mode" | tee -a "$RESULTS" >&2
}

for r in $RUNS; do
	run "${r%%:*}" "$([[ $r == *:* ]] && echo "${r#*:}")"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$N" "$CLIENT_QPS" "$CLIENT_BURST" "$WORKERS" <<'PY'
import json, sys
from kubeapi import machine
results, out, n, qps, burst, workers = sys.argv[1:7]
runs = [json.loads(l) for l in open(results) if l.strip()]
json.dump({"scenario": "expand", "claims": int(n),
           "settings": {"equal": {"client_qps": float(qps), "client_burst": int(burst), "workers": int(workers)},
                        "driver": "csi-mock"},
           "machine": machine(), "runs": runs}, open(out, "w"), indent=2)
print(f"{'side':9s} {'settings':>9s} {'all resized':>11s} {'per s':>6s} {'p50/p99':>11s}")
for r in runs:
    print(f"{r['side']:9s} {r['settings']:>9s} {r['all_resized_s']:10.1f}s {r['resized_per_s']:6.1f} "
          f"{r['p50_s']:5.1f}/{r['p99_s']:<5.1f}")
print(f"report: {out}")
PY
