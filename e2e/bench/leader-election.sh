#!/usr/bin/env bash
# Leader election of csi-controller-manager: SIGTERM handover, SIGKILL failover, and the API
# requests the election costs, for a few settings of lease duration / renew deadline / retry
# period. Two replicas (identities a and b, --controllers=provisioner,attacher: two Leases) run
# against the local control plane and csi-mock. For each setting:
#   - steady state: the Lease requests of the pair (leader + standby) over a window, from the
#     API server's audit log, per minute;
#   - ROUNDS times: SIGTERM of the leader, then SIGKILL of the (new) leader, the stopped one
#     restarted as the standby each time. The time is from the signal to the successor's
#     acquireTime on the last of its Leases (written by the successor itself: no polling error).
#
#   e2e/bench/leader-election.sh [ROUNDS]    (default 3; runs in its own run dir and ports)
#   LE_SETTINGS="15s/10s/5s 4s/3s/1s" e2e/bench/leader-election.sh
#   LE_WINDOW=60   seconds of the steady-state window
set -euo pipefail

# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
# shellcheck source=../lib/versions.sh
source "$E2E_SRC/lib/versions.sh"
# shellcheck source=../lib/build.sh
source "$E2E_SRC/lib/build.sh"

ROUNDS=${1:-3}
SETTINGS=${LE_SETTINGS:-"15s/10s/5s 8s/6s/2s 4s/3s/1s"}
WINDOW=${LE_WINDOW:-60}
export E2E_DIR=${BENCH_DIR:-$E2E_CACHE/bench-le}
# Ports of its own, so that a test cluster may run beside it.
export ETCD_PORT=${BENCH_ETCD_PORT:-26790} ETCD_PEER_PORT=${BENCH_ETCD_PEER_PORT:-26800}
export APISERVER_PORT=${BENCH_APISERVER_PORT:-39443} KCM_PORT=${BENCH_KCM_PORT:-33257}
export SCHEDULER_PORT=${BENCH_SCHEDULER_PORT:-33259} KWOK_PORT=${BENCH_KWOK_PORT:-33247}
export SIDECAR_PORT_BASE=${BENCH_SIDECAR_PORT_BASE:-33280} CSI_MOCK_CONTROL_PORT=${BENCH_CSI_MOCK_CONTROL_PORT:-33290}
export APISERVER_AUDIT_LOG=$E2E_DIR/audit.log
CLUSTER=$E2E_SRC/cluster
OURS_BIN=${OURS_BIN:-$REPO_ROOT/target/debug/csi-controller-manager}
[[ -x $OURS_BIN ]] || die "$OURS_BIN not found: build it with 'cargo build -p controller-manager'"
NS=default

trap 'stop_bg le-a; stop_bg le-b; "$CLUSTER" down >/dev/null 2>&1 || true' EXIT
# The API server must start with the audit flags: begin from a stopped cluster.
"$CLUSTER" down >/dev/null 2>&1 || true
rm -f "$APISERVER_AUDIT_LOG"
"$CLUSTER" up
"$CLUSTER" driver mock
# shellcheck disable=SC1091
source "$E2E_DIR/driver.env"
KUBECONFIG_FILE=$E2E_DIR/kubeconfig
kubectl_() { "$(bin_path kubernetes kubectl)" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

sanitize() { sed -e 's/[^a-zA-Z0-9-]/-/g' -e 's/-$/-X/' <<<"$1"; }
LEASES=("$(sanitize "$DRIVER_NAME")" "$(sanitize "external-attacher-leader-$DRIVER_NAME")")

# holder_of_all: the identity holding every Lease, or nothing.
holder_of_all() {
	local h first=""
	for l in "${LEASES[@]}"; do
		h=$(kubectl_ get lease -n "$NS" "$l" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
		[[ -n $h ]] || return 0
		[[ -z $first || $h == "$first" ]] || return 0
		first=$h
	done
	echo "$first"
}

# wait_holder WHO SECONDS
wait_holder() {
	local deadline=$(($(now_s) + $2))
	until [[ $(holder_of_all) == "$1" ]]; do
		(($(now_s) < deadline)) || die "$1 did not hold every Lease within $2 s"
		sleep 0.2
	done
}

# last_acquire: the latest acquireTime of the Leases, in epoch seconds.
last_acquire() {
	local l t max=0
	for l in "${LEASES[@]}"; do
		t=$(kubectl_ get lease -n "$NS" "$l" -o jsonpath='{.spec.acquireTime}')
		t=$(date -d "$t" +%s.%N)
		max=$(python3 -c "print(max($max, $t))")
	done
	echo "$max"
}

start_replica() { # ID LEASE RENEW RETRY
	start_bg "le-$1" "$OURS_BIN" --csi-address "$CSI_SOCKET" --kubeconfig "$KUBECONFIG_FILE" \
		--controllers=provisioner,attacher --leader-election --leader-election-namespace="$NS" \
		--leader-election-identity="$1" --leader-election-lease-duration="$2" \
		--leader-election-renew-deadline="$3" --leader-election-retry-period="$4"
}

# stop_leader SIGNAL WHO: signals WHO's process (not its group: no grace for SIGKILL).
signal_replica() {
	kill "-$1" "$(<"$(pidfile "le-$2")")"
}

results=()
for setting in $SETTINGS; do
	IFS=/ read -r lease renew retry <<<"$setting"
	lease_s=${lease%s}
	log "setting $setting"
	for l in "${LEASES[@]}"; do kubectl_ delete lease -n "$NS" "$l" --ignore-not-found >/dev/null; done
	start_replica a "$lease" "$renew" "$retry"
	wait_holder a 120
	start_replica b "$lease" "$renew" "$retry"
	sleep 5 # b's caches synced, its electors observing

	from=$(wc -l <"$APISERVER_AUDIT_LOG")
	sleep "$WINDOW"
	to=$(wc -l <"$APISERVER_AUDIT_LOG")
	per_min=$(sed -n "$((from + 1)),${to}p" "$APISERVER_AUDIT_LOG" | python3 -c '
import collections, json, sys
window = float(sys.argv[1])
counts = collections.Counter()
for line in sys.stdin:
    e = json.loads(line)
    if not e.get("userAgent", "").startswith("csi-controller-manager"):
        continue
    if e.get("objectRef", {}).get("resource") != "leases":
        continue
    counts[e.get("verb", "?")] += 1
total = sum(counts.values())
detail = " ".join(f"{v}:{c * 60 / window:.1f}" for v, c in sorted(counts.items()))
print(f"{total * 60 / window:.1f} ({detail})")
' "$WINDOW")
	log "  lease requests per minute (leader + standby): $per_min"

	leader=a standby=b terms=() kills=()
	for ((r = 0; r < ROUNDS; r++)); do
		for sig in TERM KILL; do
			t0=$(date +%s.%N)
			signal_replica "$sig" "$leader"
			wait_holder "$standby" $((lease_s * 4 + 30))
			took=$(python3 -c "print(f'{$(last_acquire) - $t0:.2f}')")
			log "  SIG$sig of $leader: $standby held every Lease after ${took}s"
			if [[ $sig == TERM ]]; then terms+=("$took"); else kills+=("$took"); fi
			stop_bg "le-$leader"
			start_replica "$leader" "$lease" "$renew" "$retry"
			sleep 5
			[[ $(holder_of_all) == "$standby" ]] || die "the restarted $leader took over from $standby"
			tmp=$leader leader=$standby standby=$tmp
		done
	done
	stop_bg le-a
	stop_bg le-b
	summary=$(python3 -c '
import statistics, sys
def s(xs):
    xs = [float(x) for x in xs.split()]
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"
print(f"| {sys.argv[1]} | {s(sys.argv[2])} | {s(sys.argv[3])} | {sys.argv[4]} |")
' "$setting" "${terms[*]}" "${kills[*]}" "$per_min")
	results+=("$summary")
done

echo
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS rounds per setting"
echo "| lease / renew / retry | SIGTERM handover s (min / median / max) | SIGKILL failover s (min / median / max) | lease requests per minute, leader + standby |"
echo "|---|---|---|---|"
printf '%s\n' "${results[@]}"
