# Pinned builds from Go modules, cached by component+version under $E2E_CACHE/bin.
# shellcheck shell=bash
#
#   $E2E_CACHE/bin/<component>-<version>/<binaries>   (complete once .ok exists)
#   $E2E_CACHE/logs/build-<component>-<version>.log
#   $E2E_CACHE/build-times.tsv                          (component, version, seconds, date, GOCACHE state)
#
# Only the Go module proxy is used (go mod download / go build / go install).

COMPONENTS=(kubernetes etcd kwok k8s-mock-csi provisioner attacher resizer snapshotter csi-sanity helm hostpath)

comp_version() {
	case $1 in
	kubernetes | k8s-mock-csi) echo "$K8S_VERSION" ;;
	etcd) echo "$ETCD_VERSION" ;;
	kwok) echo "$KWOK_VERSION" ;;
	hostpath) echo "$HOSTPATH_VERSION" ;;
	csi-sanity) echo "$CSI_SANITY_VERSION" ;;
	helm) echo "$HELM_VERSION" ;;
	provisioner) echo "$PROVISIONER_VERSION" ;;
	attacher) echo "$ATTACHER_VERSION" ;;
	resizer) echo "$RESIZER_VERSION" ;;
	snapshotter) echo "$SNAPSHOTTER_VERSION" ;;
	*) die "unknown component '$1' (known: ${COMPONENTS[*]})" ;;
	esac
}

comp_dir() { echo "$E2E_CACHE/bin/$1-$(comp_version "$1")"; }

# bin_path COMPONENT BINARY: path of a built binary (ensure_built first).
bin_path() { echo "$(comp_dir "$1")/$2"; }

# ensure_built COMPONENT...: build what is missing from the cache.
ensure_built() {
	local c
	for c in "$@"; do
		[[ -f "$(comp_dir "$c")/.ok" ]] && continue
		with_build_lock build_component "$c"
	done
}

build_component() {
	local c=$1 ver dir tmp logf start secs gocache_state
	ver=$(comp_version "$c")
	dir=$(comp_dir "$c")
	[[ -f $dir/.ok ]] && return 0 # built by a concurrent run while we waited for the lock
	require_go
	go_env
	tmp="$dir.tmp.$$"
	rm -rf "$tmp" && mkdir -p "$tmp" "$E2E_CACHE/logs"
	logf="$E2E_CACHE/logs/build-$c-$ver.log"
	gocache_state=$([[ -d $(go env GOCACHE) && -n $(ls -A "$(go env GOCACHE)" 2>/dev/null) ]] && echo warm-gocache || echo cold-gocache)
	log "building $c $ver (first time only; log: $logf)"
	start=$(now_s)
	if ! (set -x; "build_$c" "$tmp" "$ver") >"$logf" 2>&1; then
		rm -rf "$tmp"
		if [[ $c == hostpath ]] && grep -q 'This module version is not available' "$logf"; then
			grep -m1 -o 'reading https://[^ ]*: 403 Forbidden' "$logf" >&2 || true
			die "the Go module proxy does not serve github.com/kubernetes-csi/csi-driver-host-path@$ver
  (\"403 Forbidden: This module version is not available\"; log: $logf).
  Use the Kubernetes in-tree mock driver instead: 'e2e/cluster driver k8s-mock'."
		fi
		printf -- '----- last 30 lines of %s -----\n' "$logf" >&2
		tail -n 30 "$logf" >&2
		die "building $c $ver failed (full log: $logf)"
	fi
	secs=$(($(now_s) - start))
	touch "$tmp/.ok"
	rm -rf "$dir" && mv "$tmp" "$dir"
	printf '%s\t%s\t%s\t%s\t%s\n' "$c" "$ver" "$secs" "$(date -Is)" "$gocache_state" >>"$E2E_CACHE/build-times.tsv"
	log "built $c $ver in ${secs}s -> $dir"
}

_gobuild() { nice -n 10 go build "$@"; }
_goinstall() { nice -n 10 go install "$@"; }

# mod_dir MODULE@VERSION: download a module zip through the proxy, print its directory.
mod_dir() {
	local out
	out=$(go mod download -json "$1") || { echo "$out" >&2; return 1; }
	jq -r .Dir <<<"$out"
}

# writable_copy MODULE@VERSION: a writable copy of a downloaded module (for recipe A builds).
writable_copy() {
	local src w
	src=$(mod_dir "$1") || return 1
	w=$(mktemp -d "${TMPDIR:-/tmp}/e2e-build.XXXXXX")
	cp -r "$src"/. "$w"
	chmod -R u+w "$w"
	rm -rf "$w/vendor"
	echo "$w"
}

# --- Kubernetes: tools module e2e/tools/k8s (carries the staging replace block) ---------------
k8s_ldflags() {
	local v=$1 minor=${1#v1.}
	minor=${minor%%.*}
	echo "-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
}
build_kubernetes() {
	local out=$1 ver=$2
	grep -q "k8s.io/kubernetes $ver" "$E2E_SRC/tools/k8s/go.mod" ||
		die "e2e/tools/k8s/go.mod does not require k8s.io/kubernetes $ver (K8S_VERSION); regenerate it (see e2e/README.md)"
	(cd "$E2E_SRC/tools/k8s" && _gobuild -ldflags "$(k8s_ldflags "$ver")" -o "$out/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}
# The in-tree CSI mock driver of the k8s e2e suite, served by e2e/tools/k8s/cmd/k8s-mock-csi.
build_k8s-mock-csi() {
	local out=$1
	(cd "$E2E_SRC/tools/k8s" && _gobuild -ldflags "-s -w" -o "$out/" ./cmd/k8s-mock-csi)
}

# --- etcd: tools module e2e/tools/etcd (server/go.mod has local replaces) -----------------------
build_etcd() {
	local out=$1 ver=$2
	grep -q "go.etcd.io/etcd/server/v3 $ver" "$E2E_SRC/tools/etcd/go.mod" ||
		die "e2e/tools/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ver (ETCD_VERSION)"
	(cd "$E2E_SRC/tools/etcd" &&
		_gobuild -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3 &&
		_gobuild -ldflags "-s -w" -o "$out/etcdctl" go.etcd.io/etcd/etcdctl/v3)
}

# --- no replace directives: plain go install --------------------------------------------------
build_kwok() {
	GOBIN=$1 _goinstall -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$2"
	# Standalone kwok needs its stages passed in (= kustomize/stage/fast of the same module).
	local d
	d=$(mod_dir "sigs.k8s.io/kwok@$2")
	for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
		pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
		echo "---"
		cat "$d/kustomize/stage/$f"
	done >"$1/kwok-stages.yaml"
}
build_resizer() {
	GOBIN=$1 _goinstall -ldflags "-s -w -X main.version=$2" "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer@$2"
}
build_csi-sanity() {
	GOBIN=$1 _goinstall -ldflags "-s -w" "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$2"
}
# helm's Makefile derives the k8s version (.Capabilities.KubeVersion) from its client-go
# requirement (v0.36.x for v3.21.x); without these ldflags it would claim v1.20.
build_helm() {
	GOBIN=$1 _goinstall -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$2 \
		-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=36 \
		-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36" \
		"helm.sh/helm/v3/cmd/helm@$2"
}

# --- replace directives: build inside a writable copy of the module, as upstream does ---------
build_in_copy() { # MODULE@VERSION OUT PKG...
	local mv=$1 out=$2 w rc=0
	shift 2
	w=$(writable_copy "$mv") || return 1
	(cd "$w" && _gobuild -mod=mod -ldflags "-s -w -X main.version=${mv#*@}" -o "$out/" "$@") || rc=$?
	rm -rf "$w"
	return $rc
}
build_provisioner() {
	build_in_copy "github.com/kubernetes-csi/external-provisioner/v6@$2" "$1" ./cmd/csi-provisioner
}
build_attacher() {
	build_in_copy "github.com/kubernetes-csi/external-attacher/v4@$2" "$1" ./cmd/csi-attacher
}
build_hostpath() {
	build_in_copy "github.com/kubernetes-csi/csi-driver-host-path@$2" "$1" ./cmd/hostpathplugin
}
# external-snapshotter replaces client/v8 with ./client, a nested module that is not in the zip:
# put the client module of the same version there. The CRDs come from that client module too.
build_snapshotter() {
	local out=$1 ver=$2 w c rc=0
	w=$(writable_copy "github.com/kubernetes-csi/external-snapshotter/v8@$ver") || return 1
	c=$(mod_dir "github.com/kubernetes-csi/external-snapshotter/client/v8@$ver") || return 1
	rm -rf "$w/client" && mkdir -p "$w/client" && cp -r "$c"/. "$w/client" && chmod -R u+w "$w/client"
	(cd "$w" && _gobuild -mod=mod -ldflags "-s -w -X main.version=$ver" -o "$out/" \
		./cmd/csi-snapshotter ./cmd/snapshot-controller) || rc=$?
	if ((rc == 0)); then
		mkdir -p "$out/crd"
		cp "$c"/config/crd/*.storage.k8s.io_*.yaml "$out/crd/"
	fi
	rm -rf "$w"
	return $rc
}
