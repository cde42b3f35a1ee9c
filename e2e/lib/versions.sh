# Pinned versions of everything e2e/cluster builds from Go modules.
# Changing a version here gives a new cache key, so the next run rebuilds only that component.
# shellcheck shell=bash

# Kubernetes control plane + kubectl (e2e/tools/k8s/go.mod must require the same version,
# and replace every staging module with K8S_STAGING_VERSION).
K8S_VERSION=${K8S_VERSION:-v1.36.3}
K8S_STAGING_VERSION=${K8S_STAGING_VERSION:-v0.36.3}

ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}

# NOTE: the Go module proxy reachable from the team's machines answers
# "403 This module version is not available" for every version of
# github.com/kubernetes-csi/csi-driver-host-path, so `hostpath` cannot be built here
# (see e2e/README.md). The k8s in-tree mock driver (k8s-mock-csi) stands in for it.
HOSTPATH_VERSION=${HOSTPATH_VERSION:-v1.18.0}

CSI_SANITY_VERSION=${CSI_SANITY_VERSION:-v5.6.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}

# Upstream sidecars (for side-by-side comparison with csi-controller-manager).
PROVISIONER_VERSION=${PROVISIONER_VERSION:-v6.3.0}
ATTACHER_VERSION=${ATTACHER_VERSION:-v4.12.0}
# v2.2.1 is "not available" on the proxy (it was tagged on a release branch); v2.2.0 is the
# newest 2.2.x it serves, built against the same k8s v0.36.1 libraries.
RESIZER_VERSION=${RESIZER_VERSION:-v2.2.0}
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.6.0}   # csi-snapshotter, snapshot-controller, CRDs (client/v8)
