#!/usr/bin/env bash
# csi-controller-manager on a kind cluster (needs Docker): the hostpath CSI driver's node plugin
# plus csi-controller-manager (Helm chart) in place of the upstream controller sidecars.
# Not run in CI (no Docker there); see e2e/kind/README.md.
#
#   e2e/kind/kind.sh up | smoke | down
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
KIND_CLUSTER=${KIND_CLUSTER:-csi-ccm}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}                 # e.g. kindest/node:v1.36.1; empty = kind's default
IMAGE=${IMAGE:-csi-controller-manager:e2e}
DOCKERFILE=${DOCKERFILE:-$REPO_ROOT/crates/controller-manager/Dockerfile}
CHART=${CHART:-$REPO_ROOT/charts/csi-controller-manager}
HELM_VALUES=${HELM_VALUES:-$HERE/values.yaml}
NAMESPACE=${NAMESPACE:-default}

die() { echo "[kind] error: $*" >&2; exit 1; }
log() { echo "[kind] $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

# helm and kubectl can come from the e2e cache (built from Go modules) when not installed.
tool_path() {
	local t=$1
	command -v "$t" >/dev/null 2>&1 && { command -v "$t"; return; }
	case $t in
	helm) "$REPO_ROOT/e2e/cluster" build helm | sed -n 's|^helm [^:]*: \(.*\)$|\1/helm|p' ;;
	kubectl) "$REPO_ROOT/e2e/cluster" build kubernetes | sed -n 's|^kubernetes [^:]*: \(.*\)$|\1/kubectl|p' ;;
	esac
}

cmd_up() {
	need docker "install Docker (https://docs.docker.com/engine/install/)"
	need kind "go install sigs.k8s.io/kind@latest"
	docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable"
	KUBECTL=$(tool_path kubectl) HELM=$(tool_path helm)

	if ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
		log "creating kind cluster $KIND_CLUSTER"
		kind create cluster --name "$KIND_CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
	fi
	local ctx="kind-$KIND_CLUSTER"
	k() { "$KUBECTL" --context "$ctx" "$@"; }

	[[ -f $DOCKERFILE ]] || die "no $DOCKERFILE: build an image of csi-controller-manager and set IMAGE/DOCKERFILE"
	log "building $IMAGE"
	docker build -t "$IMAGE" -f "$DOCKERFILE" "$REPO_ROOT"
	kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"

	log "installing the snapshot CRDs (external-snapshotter client module, built/cached by e2e/cluster)"
	local crd
	crd=$("$REPO_ROOT/e2e/cluster" build snapshotter | sed -n 's/^snapshotter [^:]*: //p')/crd
	k apply --server-side -f "$crd"
	k wait --for=condition=Established --timeout=60s -f "$crd"

	log "deploying the hostpath node plugin (no controller sidecars)"
	k apply -f "$HERE/hostpath-plugin.yaml"
	k rollout status statefulset/csi-hostpathplugin --timeout=180s

	[[ -d $CHART ]] || die "$CHART does not exist yet"
	log "installing csi-controller-manager from $CHART"
	"$HELM" --kube-context "$ctx" upgrade --install csi-controller-manager "$CHART" \
		--namespace "$NAMESPACE" -f "$HELM_VALUES" --wait --timeout 3m
	log "ready: kubectl --context $ctx get pods"
}

cmd_smoke() {
	KUBECTL=$(tool_path kubectl)
	k() { "$KUBECTL" --context "kind-$KIND_CLUSTER" "$@"; }
	local ns=kind-smoke
	k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
	k -n "$ns" apply -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: csi-hostpath-sc
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  containers:
  - {name: app, image: busybox:1.36, command: [sh, -c, "echo hello > /data/hello && sleep 3600"],
     volumeMounts: [{name: data, mountPath: /data}]}
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
YAML
	k -n "$ns" wait --for=jsonpath='{.status.phase}'=Bound pvc/data --timeout=120s
	k -n "$ns" wait --for=condition=Ready pod/app --timeout=180s
	k -n "$ns" exec app -- cat /data/hello
	k delete namespace "$ns" --wait=true --timeout=180s
	log "kind smoke: passed"
}

cmd_down() {
	need kind "go install sigs.k8s.io/kind@latest"
	kind delete cluster --name "$KIND_CLUSTER"
}

case ${1:-} in
up) cmd_up ;;
smoke) cmd_smoke ;;
down) cmd_down ;;
*) echo "usage: $0 up|smoke|down" >&2; exit 2 ;;
esac
