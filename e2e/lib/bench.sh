# Shared by the benchmarks in e2e/bench/: the e2e helpers, a run directory and ports of the
# benchmark's own (so that a test cluster may run beside it), and a fresh control plane with
# csi-mock.
#   bench_env NAME    E2E_DIR=$BENCH_DIR, else $E2E_CACHE/NAME; ports from BENCH_*_PORT
#   bench_cluster     stops the cluster and purges its run dir, starts it again (so that flags set by the caller, such
#                     as KCM_EXTRA_ARGS or APISERVER_AUDIT_LOG, apply), starts csi-mock and
#                     builds the upstream provisioner; stops the cluster on exit
#   bench_namespace NAME  a namespace NAME and a StorageClass NAME of the driver (Immediate
#                     binding, Delete policy)
#   bench_cpu         a JSON object: CPU seconds (user + system) used so far by each process the
#                     run dir records (control plane, csi-mock, the benchmark's own), by name
#   bench_cpu_delta BEFORE AFTER  the CPU seconds used in between, per process, as JSON
# shellcheck shell=bash

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=versions.sh
source "$E2E_SRC/lib/versions.sh"
# shellcheck source=build.sh
source "$E2E_SRC/lib/build.sh"

CLUSTER=$E2E_SRC/cluster
# The Python parts of the benchmarks share e2e/lib/kubeapi.py.
export PYTHONPATH=$E2E_SRC/lib${PYTHONPATH:+:$PYTHONPATH}
OURS_BIN=${OURS_BIN:-$REPO_ROOT/target/debug/csi-controller-manager}

bench_env() {
	export E2E_DIR=${BENCH_DIR:-$E2E_CACHE/$1}
	export ETCD_PORT=${BENCH_ETCD_PORT:-25790} ETCD_PEER_PORT=${BENCH_ETCD_PEER_PORT:-25800}
	export APISERVER_PORT=${BENCH_APISERVER_PORT:-38443} KCM_PORT=${BENCH_KCM_PORT:-32257}
	export SCHEDULER_PORT=${BENCH_SCHEDULER_PORT:-32259} KWOK_PORT=${BENCH_KWOK_PORT:-32247}
	export SIDECAR_PORT_BASE=${BENCH_SIDECAR_PORT_BASE:-32280} CSI_MOCK_CONTROL_PORT=${BENCH_CSI_MOCK_CONTROL_PORT:-32290}
	KUBECONFIG_FILE=$E2E_DIR/kubeconfig
	# Upstream's sidecars prefer $KUBECONFIG to their --kubeconfig flag: a KUBECONFIG left from
	# another cluster (the test command's, say) would point them elsewhere.
	export KUBECONFIG=$KUBECONFIG_FILE
	[[ -x $OURS_BIN ]] || die "$OURS_BIN not found: build it with 'cargo build -p controller-manager'"
	# csi-mock from the same build as ours when there is one (a release build for figures: the
	# debug build's driver took as much CPU as the API server in a 1,000-claim run).
	local mock
	mock=$(dirname "$OURS_BIN")/csi-mock
	if [[ -z ${CSI_MOCK_BIN:-} && -x $mock ]]; then
		export CSI_MOCK_BIN=$mock
	fi
}

bench_cluster() {
	# The benchmark's own processes (bench-*) first: `cluster down` knows only its components,
	# and a run that fails half-way must not leave a provisioner behind.
	trap 'bench_stop_own; "$CLUSTER" down >/dev/null 2>&1 || true' EXIT
	# From an empty etcd: a run dir left by a failed run holds its namespaces and claims.
	"$CLUSTER" down --purge >/dev/null 2>&1 || true
	"$CLUSTER" up
	# No capacity limit: csi-mock's default 1 TiB refused the expand scenario's third round
	# (500 volumes grown to 3 GiB each) with OutOfRange.
	DRIVER_EXTRA_ARGS="--total-capacity unlimited ${DRIVER_EXTRA_ARGS:-}" "$CLUSTER" driver mock
	# shellcheck disable=SC1091
	source "$E2E_DIR/driver.env"
	ensure_built provisioner
}

bench_stop_own() {
	local f
	for f in "$E2E_DIR"/pids/bench-*.pid; do
		[[ -e $f ]] || continue
		f=${f##*/}
		stop_bg "${f%.pid}"
	done
}

kubectl_() { "$(bin_path kubernetes kubectl)" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

bench_namespace() {
	kubectl_ create namespace "$1" >/dev/null
	kubectl_ apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $1}
provisioner: $DRIVER_NAME
reclaimPolicy: Delete
volumeBindingMode: Immediate
YAML
}

bench_cpu() {
	python3 - "$E2E_DIR/pids" <<'PY'
import glob, json, os, sys
tick = os.sysconf("SC_CLK_TCK")
out = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.pid"))):
    try:
        stat = open(f"/proc/{open(f).read().strip()}/stat").read()
    except OSError:
        continue
    fields = stat[stat.rindex(")") + 2:].split()
    out[os.path.basename(f)[:-4]] = (int(fields[11]) + int(fields[12])) / tick
print(json.dumps(out))
PY
}

bench_cpu_delta() {
	python3 -c 'import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({k: round(v - a.get(k, 0), 1) for k, v in b.items()}))' "$1" "$2"
}
