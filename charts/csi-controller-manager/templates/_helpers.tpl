{{/* The release's full name, at most 63 characters. */}}
{{- define "ccm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ccm.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ccm.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ccm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ccm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ccm.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace -}}
{{- end -}}

{{- define "ccm.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.registry -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ccm.enabled" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- if has $name $ctx.Values.controllers -}}true{{- end -}}
{{- end -}}

{{/* Flags of every instance of ours: the central Deployment's and the node DaemonSet's. */}}
{{- define "ccm.commonArgs" -}}
- --csi-address=unix://{{ .Values.socket.dir }}/{{ .Values.socket.file }}
- --timeout={{ .Values.timeout }}
- --kube-api-qps={{ .Values.kubeApi.qps }}
- --kube-api-burst={{ .Values.kubeApi.burst }}
- --retry-interval-start={{ .Values.retryInterval.start }}
- --retry-interval-max={{ .Values.retryInterval.max }}
- --log-level={{ .Values.logLevel }}
- --log-format={{ .Values.logFormat }}
{{- if .Values.metrics.enabled }}
- --http-endpoint=:{{ .Values.metrics.port }}
{{- end }}
{{- with .Values.featureGates }}
- --feature-gates={{ range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }}{{ $k }}={{ index $.Values.featureGates $k }}{{ end }}
{{- end }}
{{- end -}}

{{/* The provisioner's own flags. */}}
{{- define "ccm.provisionerArgs" -}}
{{- with .Values.provisioner }}
{{- if not (kindIs "invalid" .workers) }}
- --provisioner-worker-threads={{ .workers }}
{{- end }}
- --extra-create-metadata={{ .extraCreateMetadata }}
- --strict-topology={{ .strictTopology }}
- --volume-name-prefix={{ .volumeNamePrefix }}
{{- if .defaultFsType }}
- --default-fstype={{ .defaultFsType }}
{{- end }}
{{- if .capacity.enabled }}
- --enable-capacity
- --capacity-poll-interval={{ .capacity.pollInterval }}
- --capacity-ownerref-level=-1
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment of every instance of ours. */}}
{{- define "ccm.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Our container's ports, probes, mounts and resources. */}}
{{- define "ccm.containerRest" -}}
{{- if .Values.metrics.enabled }}
ports:
  - name: http
    containerPort: {{ .Values.metrics.port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
{{- end }}
volumeMounts:
  - name: socket-dir
    mountPath: {{ .Values.socket.dir }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
{{- end -}}

{{/* Our container: csi-controller-manager with its flags. */}}
{{- define "ccm.container" -}}
name: csi-controller-manager
image: {{ include "ccm.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  {{- include "ccm.commonArgs" . | nindent 2 }}
  - --controllers={{ join "," .Values.controllers }}
  {{- if .Values.leaderElection.enabled }}
  - --leader-election
  - --leader-election-namespace={{ include "ccm.leaseNamespace" . }}
  - --leader-election-lease-duration={{ .Values.leaderElection.leaseDuration }}
  - --leader-election-renew-deadline={{ .Values.leaderElection.renewDeadline }}
  - --leader-election-retry-period={{ .Values.leaderElection.retryPeriod }}
  {{- end }}
  {{- if include "ccm.enabled" (list . "provisioner") }}
  {{- include "ccm.provisionerArgs" . | trim | nindent 2 }}
  {{- end }}
  {{- if include "ccm.enabled" (list . "attacher") }}
  {{- if not (kindIs "invalid" .Values.attacher.workers) }}
  - --attacher-worker-threads={{ .Values.attacher.workers }}
  {{- end }}
  - --reconcile-sync={{ .Values.attacher.reconcileSync }}
  {{- end }}
  {{- if include "ccm.enabled" (list . "resizer") }}
  {{- with .Values.resizer }}
  {{- if not (kindIs "invalid" .workers) }}
  - --resizer-worker-threads={{ .workers }}
  {{- end }}
  - --handle-volume-inuse-error={{ .handleVolumeInUseError }}
  - --extra-modify-metadata={{ .extraModifyMetadata }}
  {{- end }}
  {{- end }}
  {{- if include "ccm.enabled" (list . "snapshotter") }}
  {{- with .Values.snapshotter }}
  {{- if not (kindIs "invalid" .workers) }}
  - --snapshotter-worker-threads={{ .workers }}
  {{- end }}
  - --snapshot-name-prefix={{ .namePrefix }}
  - --snapshot-name-uuid-length={{ .nameUuidLength }}
  - --snapshotter-extra-create-metadata={{ .extraCreateMetadata }}
  {{- end }}
  {{- end }}
  {{- if include "ccm.enabled" (list . "snapshot-controller") }}
  {{- if not (kindIs "invalid" .Values.snapshotController.workers) }}
  - --snapshot-controller-worker-threads={{ .Values.snapshotController.workers }}
  {{- end }}
  {{- end }}
  {{- range .Values.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  {{- include "ccm.env" . | nindent 2 }}
{{ include "ccm.containerRest" . | trim }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end -}}

{{/* The pod labels of the node DaemonSet: a name of their own, so that neither the
Deployment, nor its PodDisruptionBudget, anti-affinity or Service select them. */}}
{{- define "ccm.nodeSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Our container in the node DaemonSet: the provisioner alone, for its node's claims. */}}
{{- define "ccm.nodeContainer" -}}
name: csi-controller-manager
image: {{ include "ccm.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  {{- include "ccm.commonArgs" . | nindent 2 }}
  - --controllers=provisioner
  - --node-deployment
  - --node-deployment-immediate-binding={{ .Values.nodeDeployment.immediateBinding }}
  - --node-deployment-base-delay={{ .Values.nodeDeployment.baseDelay }}
  - --node-deployment-max-delay={{ .Values.nodeDeployment.maxDelay }}
  {{- include "ccm.provisionerArgs" . | trim | nindent 2 }}
  {{- range .Values.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  {{- include "ccm.env" . | nindent 2 }}
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
{{ include "ccm.containerRest" . | trim }}
securityContext:
  {{- toYaml .Values.nodeDeployment.securityContext | nindent 2 }}
{{- end -}}
