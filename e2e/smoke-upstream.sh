#!/usr/bin/env bash
# Smoke check of the harness with the upstream Go sidecars: provision, attach, resize,
# snapshot, detach, delete, against a real apiserver + KCM + scheduler + kwok nodes.
#
#   e2e/smoke-upstream.sh            (brings up cluster, driver and sidecars if needed)
#   SMOKE_DRIVER=hostpath|k8s-mock|mock e2e/smoke-upstream.sh
#   SMOKE_SIDECARS=ours e2e/smoke-upstream.sh   (same checks against csi-controller-manager)
#
# Last line: "smoke: N passed, M failed". Exit status 0 only if nothing failed.
set -euo pipefail

# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/versions.sh
source "$E2E_SRC/lib/versions.sh"
CLUSTER="$E2E_SRC/cluster"
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-90}
SMOKE_SIDECARS=${SMOKE_SIDECARS:-upstream}
SMOKE_KEEP=${SMOKE_KEEP:-false}   # true: leave the namespace for debugging

passed=0 failed=0 skipped=0
ok()   { passed=$((passed + 1)); printf '%sPASS%s %s\n' "$_c_grn" "$_c_off" "$*"; }
bad()  { failed=$((failed + 1)); printf '%sFAIL%s %s\n' "$_c_red" "$_c_off" "$*"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP %s\n' "$*"; }
summary() {
	if ((skipped)); then
		echo "smoke: $passed passed, $failed failed, $skipped skipped"
	else
		echo "smoke: $passed passed, $failed failed"
	fi
}

# --- bring everything up (each step is idempotent) ---------------------------------------------
"$CLUSTER" up
if [[ -z ${SMOKE_DRIVER:-} ]]; then
	if [[ -f $E2E_DIR/driver.env ]]; then
		SMOKE_DRIVER=$(sed -n 's/^DRIVER_KIND=//p' "$E2E_DIR/driver.env")
	else
		SMOKE_DRIVER=hostpath
	fi
fi
if ! "$CLUSTER" driver "$SMOKE_DRIVER"; then
	if [[ $SMOKE_DRIVER == hostpath ]]; then
		warn "hostpath driver unavailable (see above); falling back to the k8s in-tree mock driver (k8s-mock)"
		SMOKE_DRIVER=k8s-mock
		"$CLUSTER" driver k8s-mock
	else
		# Once more, loudly: a start that failed on a freshly booted machine (see the log above for
		# how the first attempt ended) should not hide whether the harness works.
		warn "driver $SMOKE_DRIVER did not start; trying once more"
		if ! "$CLUSTER" driver "$SMOKE_DRIVER"; then
			bad "driver $SMOKE_DRIVER could not be started"
			summary
			exit 1
		fi
	fi
fi
"$CLUSTER" sidecars "$SMOKE_SIDECARS"
if [[ $SMOKE_SIDECARS == ours ]] && [[ $(cat "$E2E_DIR/sidecars.mode" 2>/dev/null) != ours ]]; then
	skip "csi-controller-manager binary not built; nothing to check"
	summary
	exit 0
fi

# shellcheck disable=SC1091
source "$E2E_DIR/driver.env"
KUBECTL=$E2E_CACHE/bin/kubernetes-$K8S_VERSION/kubectl
k() { "$KUBECTL" --kubeconfig "$E2E_DIR/kubeconfig" "$@"; }

# wait_for TIMEOUT CMD...: poll until CMD succeeds.
wait_for() {
	local deadline=$(($(now_s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		(($(now_s) < deadline)) || return 1
		sleep 0.5
	done
}

# From here on a failing command is a failed check, not the end of the run.
set +e
NS=smoke-$(date +%s)
SC=e2e-smoke-$SMOKE_DRIVER
VSC=e2e-smoke-$SMOKE_DRIVER
# Fully qualified: the e2e suite's CRD test serves the same kinds in a group of its own, and
# kubectl's discovery cache, kept per server address between runs, may still name that group.
SNAPS=volumesnapshots.snapshot.storage.k8s.io CONTENTS=volumesnapshotcontents.snapshot.storage.k8s.io
echo "== smoke: driver $DRIVER_KIND ($DRIVER_NAME), controllers: $(<"$E2E_DIR/sidecars.mode"), namespace $NS"

diagnose() {
	echo "---- diagnostics ($*)"
	k -n "$NS" get pvc,pod,"$SNAPS" -o wide 2>&1 || true
	k get pv,volumeattachment 2>&1 || true
	k -n "$NS" get events --sort-by=.lastTimestamp 2>&1 | tail -n 15 || true
	local c
	for c in csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller ours kube-controller-manager "$DRIVER_KIND"; do
		[[ -f $E2E_DIR/logs/$c.log ]] || continue
		echo "---- tail $E2E_DIR/logs/$c.log"
		tail -n 8 "$E2E_DIR/logs/$c.log"
	done
	echo "----"
}

cleanup() {
	[[ $SMOKE_KEEP == true ]] && { echo "keeping namespace $NS (SMOKE_KEEP=true)"; return; }
	k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $SC}
provisioner: $DRIVER_NAME
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: true
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: $VSC}
driver: $DRIVER_NAME
deletionPolicy: Delete
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: $NS}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: $SC
  resources: {requests: {storage: 1Gi}}
EOF

# 1. provision + bind (external-provisioner + KCM PV binder)
pvc_bound() { [[ $(k -n "$NS" get pvc data -o jsonpath='{.status.phase}') == Bound ]]; }
PV=""
if wait_for "$SMOKE_TIMEOUT" pvc_bound; then
	PV=$(k -n "$NS" get pvc data -o jsonpath='{.spec.volumeName}')
	ok "PVC bound to $PV"
else
	bad "PVC did not become Bound within ${SMOKE_TIMEOUT}s"
	diagnose "provisioning"
	for c in "pod Running" "volume attached" "PVC expanded" "snapshot" "detach" "PV deleted"; do
		skip "$c (needs a bound PVC)"
	done
	summary
	exit 1
fi

# 2. a pod scheduled to a kwok node gets its volume attached (scheduler + ADC + external-attacher)
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: $NS}
spec:
  nodeSelector: {type: kwok}
  tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
  containers: [{name: app, image: registry.k8s.io/pause:3.10}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
EOF
pod_running() { [[ $(k -n "$NS" get pod app -o jsonpath='{.status.phase}') == Running ]]; }
if wait_for "$SMOKE_TIMEOUT" pod_running; then
	ok "pod scheduled to $(k -n "$NS" get pod app -o jsonpath='{.spec.nodeName}') and Running"
else
	bad "pod did not become Running within ${SMOKE_TIMEOUT}s"
	diagnose "scheduling"
fi
va_name() { k get volumeattachment -o json | jq -r --arg pv "$PV" '.items[] | select(.spec.source.persistentVolumeName == $pv) | .metadata.name'; }
va_attached() { [[ -n $PV ]] && [[ $(k get volumeattachment "$(va_name)" -o jsonpath='{.status.attached}') == true ]]; }
if wait_for "$SMOKE_TIMEOUT" va_attached; then
	ok "VolumeAttachment $(va_name) attached=true"
else
	bad "no attached VolumeAttachment for $PV within ${SMOKE_TIMEOUT}s"
	diagnose "attach"
fi

# 3. expand the PVC (external-resizer; the driver needs no node expansion)
k -n "$NS" patch pvc data --type=merge -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}' >/dev/null
pvc_resized() { [[ $(k -n "$NS" get pvc data -o jsonpath='{.status.capacity.storage}') == 2Gi ]]; }
if wait_for "$SMOKE_TIMEOUT" pvc_resized; then
	ok "PVC expanded to 2Gi"
else
	bad "PVC capacity is not 2Gi after ${SMOKE_TIMEOUT}s"
	diagnose "resize"
fi

# 4. snapshot (snapshot-controller + csi-snapshotter), then delete it
k apply -f - >/dev/null <<EOF
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap, namespace: $NS}
spec:
  volumeSnapshotClassName: $VSC
  source: {persistentVolumeClaimName: data}
EOF
snap_ready() { [[ $(k -n "$NS" get "$SNAPS" snap -o jsonpath='{.status.readyToUse}') == true ]]; }
if wait_for "$SMOKE_TIMEOUT" snap_ready; then
	CONTENT=$(k -n "$NS" get "$SNAPS" snap -o jsonpath='{.status.boundVolumeSnapshotContentName}')
	k -n "$NS" delete "$SNAPS" snap --wait=false >/dev/null
	content_gone() { ! k get "$CONTENTS" "$CONTENT" >/dev/null 2>&1; }
	if wait_for "$SMOKE_TIMEOUT" content_gone; then
		ok "VolumeSnapshot readyToUse, then deleted with its content"
	else
		bad "VolumeSnapshotContent $CONTENT still exists ${SMOKE_TIMEOUT}s after deleting the snapshot"
		diagnose "snapshot delete"
	fi
else
	bad "VolumeSnapshot not readyToUse within ${SMOKE_TIMEOUT}s"
	diagnose "snapshot"
fi

# 5. deleting the pod detaches the volume (ADC deletes the VA, attacher unpublishes)
VA=$(va_name || true)
k -n "$NS" delete pod app --wait=false >/dev/null
va_gone() { [[ -z $(va_name) ]]; }
if [[ -n $VA ]] && wait_for "$SMOKE_TIMEOUT" va_gone; then
	ok "pod deleted -> VolumeAttachment $VA deleted"
else
	bad "VolumeAttachment for $PV still present ${SMOKE_TIMEOUT}s after deleting the pod"
	diagnose "detach"
fi

# 6. deleting the PVC deletes the PV (reclaimPolicy Delete)
k -n "$NS" delete pvc data --wait=false >/dev/null
pv_gone() { [[ -n $PV ]] && ! k get pv "$PV" >/dev/null 2>&1; }
if wait_for "$SMOKE_TIMEOUT" pv_gone; then
	ok "PVC deleted -> PV $PV deleted"
else
	bad "PV $PV still present ${SMOKE_TIMEOUT}s after deleting the PVC"
	diagnose "delete"
fi

summary
((failed == 0 && passed > 0))
