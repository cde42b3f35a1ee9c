#!/usr/bin/env bash
# Provisioning throughput, upstream external-provisioner vs csi-controller-manager: each runs
# alone against the same local control plane and csi-mock (so the driver is not the bottleneck),
# with the same client QPS/burst, and kube-controller-manager's client QPS raised (as operators
# of large clusters do) so that its PV binder is not what is measured. Per run: N claims
# (Immediate binding, Delete policy) are created at once; the time until every PV exists (the
# provisioner's part) and until every claim is Bound (end to end, with kube-controller-manager's
# binding), per-claim p50/p99 of both, then all claims deleted and the time until every PV is gone.
#
#   e2e/bench/provision-throughput.sh [N] [OUT.json]
#       N       claims per run (default 200)
#       OUT     the JSON report (default $BENCH_DIR/provision-throughput.json)
#
# Environment:
#   RUNS          runs in order, each SIDE or SIDE:WORKERS, SIDE upstream|ours; without
#                 WORKERS, the side's default --worker-threads (default: "upstream ours
#                 upstream:10 ours:10": both at their defaults, then both at 10)
#   CLIENT_QPS    --kube-api-qps of both provisioners (default 200); CLIENT_BURST (default 400)
#   KCM_QPS       kube-controller-manager's --kube-api-qps (default 200); KCM_BURST (default 400)
#   CREATE_WRITERS  connections creating the claims at once (default 8)
#   CLAIM_HANDOVER  preset (default): the claims are created with the annotations that hand them
#                 to the provisioner, so the figures are the provisioners' own; kcm: as users
#                 create them, kube-controller-manager's binder hands each over (its pace, not
#                 the provisioner's, then sets "all PVs" on this machine)
#   BENCH_DIR     run dir (default $E2E_CACHE/bench-throughput), BENCH_*_PORT as api-requests.sh
#   OURS_BIN      csi-controller-manager binary (default target/debug/csi-controller-manager)
#
# Prints one line per run and writes the JSON report (machine, settings, runs).
set -euo pipefail

# shellcheck source=../lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bench.sh"

N=${1:-200}
bench_env bench-throughput
OUT=${2:-$E2E_DIR/provision-throughput.json}
RUNS=${RUNS:-upstream ours upstream:10 ours:10}
CLIENT_QPS=${CLIENT_QPS:-200} CLIENT_BURST=${CLIENT_BURST:-400}
KCM_QPS=${KCM_QPS:-200} KCM_BURST=${KCM_BURST:-400}
CREATE_WRITERS=${CREATE_WRITERS:-8}
CLAIM_HANDOVER=${CLAIM_HANDOVER:-preset}
[[ $CLAIM_HANDOVER == preset || $CLAIM_HANDOVER == kcm ]] || die "CLAIM_HANDOVER must be preset or kcm"
# kube-controller-manager starts with the raised QPS (bench_cluster starts it afresh).
export KCM_EXTRA_ARGS="--kube-api-qps=$KCM_QPS --kube-api-burst=$KCM_BURST"
bench_cluster
RESULTS=$E2E_DIR/provision-throughput.runs
: >"$RESULTS"

# The watcher: creates the claims, follows PVs and claims by watch, deletes the claims, and
# prints one JSON line of timings. Arguments: kubeconfig namespace class driver N writers.
measure() {
	python3 - "$@" <<'PY'
import json, multiprocessing, sys, threading, time
from kubeapi import Api, pct

kubeconfig, ns, cls, driver, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
CREATE_WRITERS = int(sys.argv[6])
# With CLAIM_HANDOVER=preset the claims carry the hand-over annotations from their creation, as
# kube-controller-manager would set them, so that its binder's pace is not in the provisioner's
# figures; with kcm, kube-controller-manager hands each claim over itself.
PRESET = ({"volume.kubernetes.io/storage-provisioner": driver,
           "volume.beta.kubernetes.io/storage-provisioner": driver} if sys.argv[7] == "preset" else {})
api = Api(kubeconfig)
call = api.call

lock = threading.Lock()
created, handed_at, pv_at, bound_at, pv_gone = {}, {}, {}, {}, {}
pv_claim = {}
events = {"pvs": threading.Event(), "bound": threading.Event(), "gone": threading.Event(), "deleting": threading.Event()}

def on_pv(kind, pv, t):
    spec = pv.get("spec", {})
    ref = spec.get("claimRef") or {}
    if (spec.get("csi") or {}).get("driver") != driver or ref.get("namespace") != ns:
        return
    with lock:
        name = pv["metadata"]["name"]
        if kind == "ADDED" and ref["name"] not in pv_at:
            pv_at[ref["name"]] = t
            pv_claim[name] = ref["name"]
            if len(pv_at) == n:
                events["pvs"].set()
        elif kind == "DELETED" and events["deleting"].is_set():
            pv_gone[name] = t
            if len(pv_gone) == n:
                events["gone"].set()

# kube-controller-manager hands a claim to its provisioner by annotating it; the provisioners
# act only after that, so the time from the hand-over to the PV is the provisioner's own part.
HANDOVER = "volume.kubernetes.io/storage-provisioner"

def on_pvc(kind, pvc, t):
    if kind == "DELETED":
        return
    name = pvc["metadata"]["name"]
    if HANDOVER in (pvc["metadata"].get("annotations") or {}):
        with lock:
            handed_at.setdefault(name, t)
    if (pvc.get("status") or {}).get("phase") != "Bound":
        return
    with lock:
        if name not in bound_at:
            bound_at[name] = t
            if len(bound_at) == n:
                events["bound"].set()

# The claims are created by several writer processes at once, so that neither their creation (one
# connection manages about 100 a second here) nor the writers' share of the interpreter (a
# watch read too slowly is ended by the API server) is what bounds the provisioners. The pool is
# forked before any thread starts; CLOCK_MONOTONIC is the same in every process.
def create_part(k):
    conn, times = api.conn(), {}
    for i in range(k, n, CREATE_WRITERS):
        name = f"claim-{i}"
        t = time.monotonic()
        call(conn, "POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "annotations": PRESET},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": cls,
                     "resources": {"requests": {"storage": "1Gi"}}}})
        times[name] = t
    return times

pool = multiprocessing.get_context("fork").Pool(CREATE_WRITERS)
c = api.conn()
api.watch("/api/v1/persistentvolumes", on_pv)
api.watch(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", on_pvc)

t0 = time.monotonic()
for part in pool.map(create_part, range(CREATE_WRITERS)):
    created.update(part)
pool.close()
t_created = time.monotonic() - t0
timeout = 600
if not events["pvs"].wait(timeout) or not events["bound"].wait(timeout):
    raise SystemExit(f"after {timeout} s: {len(pv_at)} PVs, {len(bound_at)} of {n} claims Bound")
t_pvs = max(pv_at.values()) - t0
t_bound = max(bound_at.values()) - t0

events["deleting"].set()
t1 = time.monotonic()
call(c, "DELETE", f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
if not events["gone"].wait(timeout):
    raise SystemExit(f"after {timeout} s: {len(pv_gone)} of {n} PVs deleted")
t_gone = max(pv_gone.values()) - t1

pv_lat = [pv_at[k] - created[k] for k in created]
bound_lat = [bound_at[k] - created[k] for k in created]
# A PV may be seen before the claim's annotation when the watches' events interleave; then 0.
handed_lat = [handed_at.get(k, pv_at[k]) - created[k] for k in created]
own_lat = [max(0.0, pv_at[k] - handed_at.get(k, pv_at[k])) for k in created]
print(json.dumps({
    "claims": n,
    "create_s": round(t_created, 2),
    "watch_restarts": api.watch_restarts,
    "all_pvs_s": round(t_pvs, 2),
    "all_bound_s": round(t_bound, 2),
    "pvs_per_s": round(n / t_pvs, 1),
    "pv_p50_s": round(pct(pv_lat, 50), 2), "pv_p99_s": round(pct(pv_lat, 99), 2),
    # Created to handed over (kube-controller-manager's part), handed over to PV (the provisioner's).
    "handover_p50_s": round(pct(handed_lat, 50), 2), "handover_p99_s": round(pct(handed_lat, 99), 2),
    "own_p50_s": round(pct(own_lat, 50), 2), "own_p99_s": round(pct(own_lat, 99), 2),
    "bound_p50_s": round(pct(bound_lat, 50), 2), "bound_p99_s": round(pct(bound_lat, 99), 2),
    "all_deleted_s": round(t_gone, 2),
    # Per claim, in creation order: seconds since the first creation, to its PV, to Bound, to
    # the hand-over.
    "series": [[round(created[k] - t0, 3), round(pv_at[k] - created[k], 3), round(bound_at[k] - created[k], 3),
                round(handed_at.get(k, pv_at[k]) - created[k], 3)]
               for k in sorted(created, key=created.get)],
}))
PY
}

# start SIDE WORKERS NAME: one provisioner, started in the background as NAME.
start() {
	local side=$1 workers=$2 name=$3 wflag=()
	case $side in
	upstream)
		[[ -n $workers ]] && wflag=(--worker-threads="$workers")
		start_bg "$name" "$(bin_path provisioner csi-provisioner)" --csi-address="$CSI_SOCKET" \
			--kubeconfig="$KUBECONFIG_FILE" --leader-election=false -v=1 \
			--kube-api-qps="$CLIENT_QPS" --kube-api-burst="$CLIENT_BURST" "${wflag[@]}"
		;;
	ours)
		[[ -n $workers ]] && wflag=(--worker-threads "$workers")
		start_bg "$name" "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
			--controllers=provisioner --kube-api-qps "$CLIENT_QPS" --kube-api-burst "$CLIENT_BURST" "${wflag[@]}"
		;;
	*) die "unknown side '$side' in RUNS (upstream or ours)" ;;
	esac
}

# warm NAME: the provisioner provisions one probe claim within 60 s (its caches synced, it
# acts); the probe is deleted again. Fails otherwise.
warm() {
	local name=$1 ns="$1-probe" i
	bench_namespace "$ns"
	printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: probe, namespace: %s}\nspec: {accessModes: [ReadWriteOnce], storageClassName: %s, resources: {requests: {storage: 1Gi}}}\n' "$ns" "$ns" |
		kubectl_ apply -f - >/dev/null
	for ((i = 0; i < 120; i++)); do
		if [[ $(kubectl_ -n "$ns" get pvc probe -o jsonpath='{.status.phase}') == Bound ]]; then
			kubectl_ delete namespace "$ns" --wait=false >/dev/null
			kubectl_ delete storageclass "$ns" >/dev/null
			return 0
		fi
		sleep 0.5
	done
	kubectl_ delete namespace "$ns" --wait=false >/dev/null
	kubectl_ delete storageclass "$ns" >/dev/null
	return 1
}

# run SIDE [WORKERS]: one provisioner alone; appends its JSON line to $RESULTS. A provisioner
# that does not act within a minute of its start (seen once with upstream's, idle after its
# start-up log) is restarted, at most twice.
run() {
	local side=$1 workers=${2:-} ns name attempt
	name="bench-$side-${workers:-default}"
	ns=$name
	for attempt in 1 2 3; do
		start "$side" "$workers" "$name"
		sleep 2
		is_running "$name" || fail_component "$name" "the $side provisioner did not start"
		warm "$name-$attempt" && break
		warn "$side: the provisioner did not provision a probe claim in 60 s; restarting it"
		stop_bg "$name"
		((attempt < 3)) || fail_component "$name" "$side: the provisioner never acted"
	done
	bench_namespace "$ns"
	local line cpu
	cpu=$(bench_cpu)
	line=$(measure "$KUBECONFIG_FILE" "$ns" "$ns" "$DRIVER_NAME" "$N" "$CREATE_WRITERS" "$CLAIM_HANDOVER") ||
		fail_component "$name" "$side: the run did not complete"
	# CPU seconds of each process over the run (provisioning and deletion): on a machine the
	# control plane saturates, a side's own share is what it takes from the API server.
	cpu=$(bench_cpu_delta "$cpu" "$(bench_cpu)")
	stop_bg "$name"
	kubectl_ delete storageclass "$ns" >/dev/null
	kubectl_ delete namespace "$ns" --wait=false >/dev/null
	python3 -c 'import json, sys
r = json.loads(sys.argv[1])
cpu = {("provisioner" if k == sys.argv[5] else k): v for k, v in json.loads(sys.argv[4]).items()}
r.update(side=sys.argv[2], workers=sys.argv[3] or "default", cpu_s=cpu)
print(json.dumps(r))' "$line" "$side" "$workers" "$cpu" "$name" | tee -a "$RESULTS" >&2
}

for r in $RUNS; do
	run "${r%%:*}" "$([[ $r == *:* ]] && echo "${r#*:}")"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$OUT" "$N" "$CLIENT_QPS" "$CLIENT_BURST" "$KCM_QPS" "$KCM_BURST" "$CREATE_WRITERS" "$CLAIM_HANDOVER" <<'PY'
import json, sys
from kubeapi import machine
results, out, n, qps, burst, kqps, kburst, writers, handover = sys.argv[1:10]
runs = [json.loads(l) for l in open(results) if l.strip()]
report = {
    "scenario": "provision", "claims": int(n),
    "settings": {"client_qps": float(qps), "client_burst": int(burst),
                 "kcm_qps": float(kqps), "kcm_burst": int(kburst), "driver": "csi-mock",
                 "claim_writers": int(writers), "claim_handover": handover,
                 "binding": "Immediate", "reclaim_policy": "Delete"},
    "machine": machine(),
    "runs": runs,
}
json.dump(report, open(out, "w"), indent=2)
print(f"{'side':9s} {'workers':>7s} {'all PVs':>8s} {'all Bound':>9s} {'PVs/s':>6s} "
      f"{'PV p50/p99':>11s} {'own p50/p99':>11s} {'Bound p50/p99':>13s} {'all deleted':>11s} {'CPU s: prov/apiserver/etcd/kcm':>31s}")
for r in runs:
    cpu = r.get("cpu_s", {})
    cpus = "/".join(f"{cpu.get(k, 0):.1f}" for k in ("provisioner", "kube-apiserver", "etcd", "kube-controller-manager"))
    print(f"{r['side']:9s} {r['workers']:>7s} {r['all_pvs_s']:7.1f}s {r['all_bound_s']:8.1f}s "
          f"{r['pvs_per_s']:6.1f} {r['pv_p50_s']:5.1f}/{r['pv_p99_s']:<5.1f} "
          f"{r.get('own_p50_s', 0):5.1f}/{r.get('own_p99_s', 0):<5.1f} "
          f"{r['bound_p50_s']:6.1f}/{r['bound_p99_s']:<6.1f} {r['all_deleted_s']:10.1f}s {cpus:>31s}")
print(f"report: {out}")
PY
