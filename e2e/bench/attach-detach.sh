#!/usr/bin/env bash
# Attach and detach, upstream external-attacher vs csi-controller-manager's attacher: each runs
# alone against the same local control plane and csi-mock (so the driver is not the
# bottleneck). N volumes are provisioned once (by ours, the provisioner only); per run:
#   1. attach: N VolumeAttachments created at once, spread over the fake nodes; the time until
#      every one is attached, and the per-attachment p50/p99;
#   2. burst: half of them deleted (a detach burst) while N/5 new ones arrive at the same
#      moment; the time until the detached ones are gone, and the new ones' attach p50/p99
#      during the burst (the figure the issue asks about);
#   3. everything detached and deleted.
# VolumeAttachments are created directly, as kube-controller-manager's attach/detach controller
# would for pods on the nodes: that controller is the same for both sides (and, at its default
# client QPS, slower than either), so it is left out of what is compared.
#
#   e2e/bench/attach-detach.sh [N] [OUT.json]
#       N       attachments in the first wave (default 500)
#       OUT     the JSON report (default $BENCH_DIR/attach-detach.json)
#
# Environment:
#   RUNS          runs in order, each SIDE or SIDE:equal, SIDE upstream|ours; `equal` gives both
#                 CLIENT_QPS/CLIENT_BURST and WORKERS workers, else each side's defaults
#                 (default: "upstream ours upstream:equal ours:equal")
#   CLIENT_QPS    (default 200), CLIENT_BURST (default 400), WORKERS (default 10)
#   BENCH_DIR, BENCH_*_PORT, OURS_BIN as the other benchmarks
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-500}
bench_env bench-attach
OUT=${2:-$E2E_DIR/attach-detach.json}
RUNS=${RUNS:-upstream ours upstream:equal ours:equal}
CLIENT_QPS=${CLIENT_QPS:-200} CLIENT_BURST=${CLIENT_BURST:-400} WORKERS=${WORKERS:-10}
NEW=$(((N + 4) / 5))
bench_cluster
ensure_built attacher
RESULTS=$E2E_DIR/attach-detach.runs
: >"$RESULTS"

# The volumes: N + NEW claims provisioned by ours, then the provisioner stopped.
NS=bench-attach
bench_namespace "$NS"
start_bg bench-provisioner "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
	--controllers=provisioner --kube-api-qps 200 --kube-api-burst 400
{
	for ((i = 0; i < N + NEW; i++)); do
		printf -- '---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c-%d, namespace: %s}\n' "$i" "$NS"
		printf 'spec: {accessModes: [ReadWriteOnce], storageClassName: %s, resources: {requests: {storage: 1Gi}}}\n' "$NS"
	done
} | kubectl_ apply -f - >/dev/null
log "provisioning $((N + NEW)) volumes"
deadline=$(($(now_s) + 600))
until [[ $(kubectl_ -n "$NS" get pvc -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Bound) == $((N + NEW)) ]]; do
	(($(now_s) < deadline)) || die "the volumes were not provisioned in 600 s"
	sleep 2
done
stop_bg bench-provisioner

# The measurement: creates, watches and deletes VolumeAttachments; prints one JSON line.
# Arguments: kubeconfig namespace driver N NEW.
measure() {
	python3 - "$@" <<'PY'
import json, sys, threading, time
from kubeapi import Api, pct

kubeconfig, ns, driver, n, new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
api = Api(kubeconfig)
call, conn = api.call, api.conn

c = conn()
pvs = [pv["metadata"]["name"] for pv in call(c, "GET", "/api/v1/persistentvolumes")["items"]
       if (pv["spec"].get("csi") or {}).get("driver") == driver
       and (pv["spec"].get("claimRef") or {}).get("namespace") == ns]
pvs.sort()
if len(pvs) < n + new:
    raise SystemExit(f"{len(pvs)} volumes, {n + new} needed")
nodes = sorted(x["metadata"]["name"] for x in call(c, "GET", "/api/v1/nodes?labelSelector=type%3Dkwok")["items"])

lock = threading.Lock()
created, attached, gone = {}, {}, {}
done = {"attached": threading.Event(), "new": threading.Event(), "gone": threading.Event(), "all_gone": threading.Event()}
want = {"gone": set(), "new": set()}

def on_va(kind, va, t):
    name = va["metadata"]["name"]
    if not name.startswith("bench-va-"):
        return
    with lock:
        if kind == "DELETED":
            gone[name] = t
            if want["gone"] and want["gone"] <= gone.keys():
                done["gone"].set()
            if len(gone) == len(created):
                done["all_gone"].set()
            return
        if (va.get("status") or {}).get("attached") and name not in attached:
            attached[name] = t
            first = [k for k in created if int(k.rsplit("-", 1)[1]) < n]
            if len(attached) >= n and all(k in attached for k in first):
                done["attached"].set()
            if want["new"] and want["new"] <= attached.keys():
                done["new"].set()

api.watch("/apis/storage.k8s.io/v1/volumeattachments", on_va)

def create(i, conn_):
    name = f"bench-va-{i}"
    call(conn_, "POST", "/apis/storage.k8s.io/v1/volumeattachments", {
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": driver, "nodeName": nodes[i % len(nodes)],
                 "source": {"persistentVolumeName": pvs[i]}}})
    with lock:
        created[name] = time.monotonic()

def parallel(fn, items, workers=8):
    api.parallel(lambda c, x: fn(x, c), items, workers)

timeout = 900
t0 = time.monotonic()
parallel(create, range(n))
if not done["attached"].wait(timeout):
    raise SystemExit(f"after {timeout} s: {len(attached)} of {n} attached")
t_attached = max(attached[f"bench-va-{i}"] for i in range(n)) - t0
first_lat = [attached[f"bench-va-{i}"] - created[f"bench-va-{i}"] for i in range(n)]

# The burst: half detached while NEW attachments arrive.
detach = [f"bench-va-{i}" for i in range(0, n, 2)]
with lock:
    want["gone"] = set(detach)
    want["new"] = {f"bench-va-{i}" for i in range(n, n + new)}
t1 = time.monotonic()
deleter = threading.Thread(target=parallel, args=(lambda name, cc: call(cc, "DELETE", f"/apis/storage.k8s.io/v1/volumeattachments/{name}", missing_ok=True), detach, 4))
deleter.start()
parallel(create, range(n, n + new), 4)
deleter.join()
if not done["new"].wait(timeout) or not done["gone"].wait(timeout):
    raise SystemExit(f"after {timeout} s: burst incomplete ({len(gone)} detached)")
t_detached = max(gone[k] for k in detach) - t1
new_lat = [attached[k] - created[k] for k in want["new"]]

# Everything detached.
rest = [k for k in created if k not in gone]
parallel(lambda name, cc: call(cc, "DELETE", f"/apis/storage.k8s.io/v1/volumeattachments/{name}", missing_ok=True), rest, 4)
if not done["all_gone"].wait(timeout):
    raise SystemExit(f"after {timeout} s: {len(gone)} of {len(created)} detached")

print(json.dumps({
    "attachments": n, "burst_detach": len(detach), "burst_attach": new,
    "all_attached_s": round(t_attached, 2), "attach_per_s": round(n / t_attached, 1),
    "attach_p50_s": round(pct(first_lat, 50), 2), "attach_p99_s": round(pct(first_lat, 99), 2),
    "burst_detached_s": round(t_detached, 2),
    "burst_attach_p50_s": round(pct(new_lat, 50), 2), "burst_attach_p99_s": round(pct(new_lat, 99), 2),
}))
PY
}

# run SIDE [equal]: one attacher alone; appends its JSON line to $RESULTS.
run() {
	local side=$1 mode=${2:-defaults} name flags=()
	name="bench-$side-$mode"
	case $side in
	upstream)
		[[ $mode == equal ]] && flags=(--kube-api-qps="$CLIENT_QPS" --kube-api-burst="$CLIENT_BURST" --worker-threads="$WORKERS")
		start_bg "$name" "$(bin_path attacher csi-attacher)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1 "${flags[@]}"
		;;
	ours)
		[[ $mode == equal ]] && flags=(--kube-api-qps "$CLIENT_QPS" --kube-api-burst "$CLIENT_BURST" --worker-threads "$WORKERS")
		start_bg "$name" "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
			--controllers=attacher "${flags[@]}"
		;;
	*) die "unknown side '$side' in RUNS (upstream or ours)" ;;
	esac
	sleep 5 # start-up: caches synced
	is_running "$name" || fail_component "$name" "the $side attacher did not start"
	local line
	line=$(measure "$KUBECONFIG_FILE" "$NS" "$DRIVER_NAME" "$N" "$NEW") ||
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
report = {
    "scenario": "attach-detach", "attachments": int(n),
    "settings": {"equal": {"client_qps": float(qps), "client_burst": int(burst), "workers": int(workers)},
                 "driver": "csi-mock"},
    "machine": machine(),
    "runs": runs,
}
json.dump(report, open(out, "w"), indent=2)
print(f"{'side':9s} {'settings':>9s} {'all attached':>12s} {'att/s':>6s} {'p50/p99':>11s} "
      f"{'burst detach':>12s} {'burst attach p50/p99':>20s}")
for r in runs:
    print(f"{r['side']:9s} {r['settings']:>9s} {r['all_attached_s']:11.1f}s {r['attach_per_s']:6.1f} "
          f"{r['attach_p50_s']:5.1f}/{r['attach_p99_s']:<5.1f} {r['burst_detached_s']:11.1f}s "
          f"{r['burst_attach_p50_s']:9.2f}/{r['burst_attach_p99_s']:<9.2f}")
print(f"report: {out}")
PY
