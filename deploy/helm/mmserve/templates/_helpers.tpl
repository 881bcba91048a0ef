{{/*
The five components and their fixed facts: module to run, settings env prefix and ports.
Ports are the defaults of services/common/settings.py (a test checks they agree), so clients
and probes can rely on them; they are not values.
*/}}
{{- define "mmserve.components" -}}
text:
  module: services.text
  envPrefix: MMSERVE_TEXT_
  grpc: true
  port: 50051
  metricsPort: 9101
  imageVariant: true
vision:
  module: services.vision
  envPrefix: MMSERVE_VISION_
  grpc: true
  port: 50052
  metricsPort: 9102
  imageVariant: true
audio:
  module: services.audio
  envPrefix: MMSERVE_AUDIO_
  grpc: true
  port: 50054
  metricsPort: 9104
  imageVariant: true
fusion:
  module: services.fusion
  envPrefix: MMSERVE_FUSION_
  grpc: true
  port: 50053
  metricsPort: 9103
  imageVariant: true
gateway:
  module: gateway
  envPrefix: MMSERVE_GATEWAY_
  grpc: false
  port: 8080
  imageVariant: false
{{- end }}

{{/* The fixed facts of one component: include "mmserve.component" (dict "root" $ "component" "text") | fromYaml */}}
{{- define "mmserve.component" -}}
{{- index (include "mmserve.components" . | fromYaml) .component | toYaml }}
{{- end }}

{{- define "mmserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-mmserve, or the release name alone when it already contains the chart name. */}}
{{- define "mmserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
<fullname>-<component>. The prefix is cut to 45 characters so that the longest derived name,
"<prefix>-vision-headless", still fits a 63-character DNS label.
*/}}
{{- define "mmserve.componentName" -}}
{{- printf "%s-%s" (include "mmserve.fullname" .root | trunc 45 | trimSuffix "-") .component }}
{{- end }}

{{- define "mmserve.headlessName" -}}
{{- printf "%s-headless" (include "mmserve.componentName" .) }}
{{- end }}

{{- define "mmserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (never the chart version). */}}
{{- define "mmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mmserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mmserve.labels" -}}
helm.sh/chart: {{ include "mmserve.chart" .root }}
{{ include "mmserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mmserve
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mmserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mmserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag[@digest]; tag defaults to appVersion, plus -cpu/-cuda for the model image. */}}
{{- define "mmserve.image" -}}
{{- $values := index .root.Values .component }}
{{- $facts := include "mmserve.component" . | fromYaml }}
{{- $tag := $values.image.tag }}
{{- if not $tag }}
{{- $tag = .root.Chart.AppVersion }}
{{- if $facts.imageVariant }}
{{- $gpu := and (hasKey $values "gpu") $values.gpu.enabled }}
{{- $tag = printf "%s-%s" $tag (ternary "cuda" "cpu" $gpu) }}
{{- end }}
{{- end }}
{{- $image := printf "%s:%s" $values.image.repository $tag }}
{{- if $values.image.digest }}
{{- $image = printf "%s@%s" $image $values.image.digest }}
{{- end }}
{{- $image }}
{{- end }}

{{/* dns:///<headless>:<port>: the client resolves every pod and round-robins over them. */}}
{{- define "mmserve.grpcTarget" -}}
{{- $facts := include "mmserve.component" . | fromYaml }}
{{- printf "dns:///%s.%s.svc:%v" (include "mmserve.headlessName" .) .root.Release.Namespace $facts.port }}
{{- end }}

{{- define "mmserve.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "mmserve.fullname" .)) .Values.gateway.auth.existingSecret }}
{{- end }}

{{- define "mmserve.apiKeysEnabled" -}}
{{- if or .Values.gateway.auth.existingSecret .Values.gateway.auth.apiKeys }}true{{ end }}
{{- end }}

{{- define "mmserve.serviceTokensSecretName" -}}
{{- default (printf "%s-service-tokens" (include "mmserve.fullname" .)) .Values.serviceAuth.existingSecret }}
{{- end }}

{{/*
Which files of the service-tokens Secret a component mounts (least privilege): the services
the callers list, each caller its own token; the gateway never sees fusion's token.
*/}}
{{- define "mmserve.serviceTokenFiles" -}}
{{- $facts := include "mmserve.component" . | fromYaml }}
{{- if $facts.grpc }}
- callers
{{- end }}
{{- if or (eq .component "fusion") (eq .component "gateway") }}
- {{ .component }}.token
{{- end }}
{{- end }}

{{/* The TLS Secret a component mounts: its own with tls.perComponent, else the shared one. */}}
{{- define "mmserve.tlsSecretName" -}}
{{- $tls := .root.Values.tls }}
{{- if $tls.perComponent.enabled }}
{{- default (printf "%s-tls" (include "mmserve.componentName" .)) (index $tls.perComponent.existingSecrets .component) }}
{{- else }}
{{- $tls.existingSecret }}
{{- end }}
{{- end }}

{{/* The DNS names a component's certificate holds: its Services as clients may dial them. */}}
{{- define "mmserve.tlsDnsNames" -}}
{{- $ns := .root.Release.Namespace }}
{{- $facts := include "mmserve.component" . | fromYaml }}
{{- $services := list (include "mmserve.componentName" .) }}
{{- if $facts.grpc }}
{{- $services = append $services (include "mmserve.headlessName" .) }}
{{- end }}
{{- range $services }}
- {{ . }}
- {{ . }}.{{ $ns }}
- {{ . }}.{{ $ns }}.svc
- {{ . }}.{{ $ns }}.svc.cluster.local
{{- end }}
{{- end }}

{{/* Which components call a gRPC service (its allowed client identities under restrictClients). */}}
{{- define "mmserve.tlsCallers" -}}
{{- $callers := dict "text" (list "fusion" "gateway") "vision" (list "fusion" "gateway") "audio" (list "gateway") "fusion" (list "gateway") }}
{{- $names := list }}
{{- range (index $callers .component | default list) }}
{{- $names = append $names (include "mmserve.componentName" (dict "root" $.root "component" .)) }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{/* PVC name of the model volume. */}}
{{- define "mmserve.modelsClaimName" -}}
{{- default (printf "%s-models" (include "mmserve.fullname" .)) .Values.modelStorage.pvc.existingClaim }}
{{- end }}

{{/*
Environment the chart owns for a component, as a name -> EnvVar-body map. The `env` values may
not repeat these names (the template fails instead of emitting duplicates).
*/}}
{{- define "mmserve.managedEnv" -}}
{{- $root := .root }}
{{- $c := .component }}
{{- $facts := include "mmserve.component" . | fromYaml }}
{{- $values := index $root.Values $c }}
{{- $p := $facts.envPrefix }}
{{- $tls := $root.Values.tls }}
{{ $p }}PORT:
  value: {{ $facts.port | quote }}
{{- if $facts.metricsPort }}
{{ $p }}METRICS_PORT:
  value: {{ $facts.metricsPort | quote }}
{{- end }}
{{- if and (hasKey $values "model") $values.model }}
{{ $p }}MODEL:
  value: {{ $values.model | quote }}
{{- end }}
{{- if eq $c "fusion" }}
{{ $p }}TEXT_ADDRESS:
  value: {{ include "mmserve.grpcTarget" (dict "root" $root "component" "text") | quote }}
{{ $p }}VISION_ADDRESS:
  value: {{ include "mmserve.grpcTarget" (dict "root" $root "component" "vision") | quote }}
{{ $p }}AUDIO_ADDRESS:
  value: {{ include "mmserve.grpcTarget" (dict "root" $root "component" "audio") | quote }}
{{ $p }}HEADS_DIR:
  value: {{ $values.heads.mountPath | quote }}
{{- end }}
{{- if eq $c "gateway" }}
{{- with $values.modelAliases }}
{{- $pairs := list }}
{{- range $alias, $target := . }}
{{- $pairs = append $pairs (printf "%s=%s" $alias $target) }}
{{- end }}
{{ $p }}MODEL_ALIASES:
  value: {{ join "," $pairs | quote }}
{{- end }}
{{ $p }}FUSION_ADDRESS:
  value: {{ include "mmserve.grpcTarget" (dict "root" $root "component" "fusion") | quote }}
{{ $p }}TEXT_ADDRESS:
  value: {{ include "mmserve.grpcTarget" (dict "root" $root "component" "text") | quote }}
{{ $p }}VISION_ADDRESS:
  value: {{ include "mmserve.grpcTarget" (dict "root" $root "component" "vision") | quote }}
{{ $p }}AUDIO_ADDRESS:
  value: {{ include "mmserve.grpcTarget" (dict "root" $root "component" "audio") | quote }}
{{- if include "mmserve.apiKeysEnabled" $root }}
{{ $p }}API_KEYS:
  valueFrom:
    secretKeyRef:
      name: {{ include "mmserve.apiKeysSecretName" $root }}
      key: {{ $root.Values.gateway.auth.existingSecretKey }}
# Keys are configured: an empty Secret value must stop the gateway, not turn auth off.
{{ $p }}REQUIRE_API_KEYS:
  value: "true"
{{- end }}
{{- end }}
{{- if $facts.grpc }}
{{ $p }}MAX_CONNECTION_AGE_S:
  value: {{ $root.Values.grpc.maxConnectionAgeSeconds | quote }}
{{ $p }}MAX_CONNECTION_AGE_GRACE_S:
  value: {{ $root.Values.grpc.maxConnectionAgeGraceSeconds | quote }}
{{- end }}
{{- with $root.Values.tracing }}
{{- if .enabled }}
OTEL_EXPORTER_OTLP_ENDPOINT:
  value: {{ .endpoint | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL:
  value: {{ .protocol | quote }}
OTEL_SERVICE_NAME:
  value: {{ printf "mmserve-%s" $c | quote }}
OTEL_TRACES_SAMPLER:
  value: parentbased_traceidratio
OTEL_TRACES_SAMPLER_ARG:
  value: {{ .sampleRatio | quote }}
{{- end }}
{{- end }}
{{- if $root.Values.serviceAuth.enabled }}
{{- $auth := $root.Values.serviceAuth.mountPath }}
{{- if $facts.grpc }}
{{ $p }}AUTH_TOKENS_FILE:
  value: {{ printf "%s/callers" $auth | quote }}
{{- end }}
{{- if or (eq $c "fusion") (eq $c "gateway") }}
{{ $p }}AUTH_TOKEN_FILE:
  value: {{ printf "%s/%s.token" $auth $c | quote }}
{{- end }}
{{- end }}
{{- if $tls.enabled }}
{{- if $facts.grpc }}
{{ $p }}TLS_CERT_FILE:
  value: {{ printf "%s/tls.crt" $tls.mountPath | quote }}
{{ $p }}TLS_KEY_FILE:
  value: {{ printf "%s/tls.key" $tls.mountPath | quote }}
{{- if $tls.clientAuth }}
{{ $p }}TLS_CLIENT_CA_FILE:
  value: {{ printf "%s/ca.crt" $tls.mountPath | quote }}
{{- if and $tls.perComponent.enabled $tls.restrictClients }}
{{ $p }}TLS_ALLOWED_CLIENTS:
  value: {{ include "mmserve.tlsCallers" . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if or (eq $c "fusion") (eq $c "gateway") }}
{{ $p }}TLS_CA_FILE:
  value: {{ printf "%s/ca.crt" $tls.mountPath | quote }}
{{- if $tls.clientAuth }}
{{ $p }}TLS_CLIENT_CERT_FILE:
  value: {{ printf "%s/tls.crt" $tls.mountPath | quote }}
{{ $p }}TLS_CLIENT_KEY_FILE:
  value: {{ printf "%s/tls.key" $tls.mountPath | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The container's env list: managed entries, then the `env` map (sorted), then extraEnv. */}}
{{- define "mmserve.env" -}}
{{- $values := index .root.Values .component }}
{{- $managed := include "mmserve.managedEnv" . | fromYaml }}
{{- range $name := keys $managed | sortAlpha }}
- name: {{ $name }}
  {{- toYaml (index $managed $name) | nindent 2 }}
{{- end }}
{{- range $name := keys $values.env | sortAlpha }}
{{- if hasKey $managed $name }}
{{- fail (printf "%s.env.%s is set by the chart; use the dedicated value instead" $.component $name) }}
{{- end }}
- name: {{ $name }}
  value: {{ index $values.env $name | toString | quote }}
{{- end }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Spread constraints; those without a labelSelector select this component's pods. */}}
{{- define "mmserve.topologySpreadConstraints" -}}
{{- $selector := include "mmserve.selectorLabels" . | fromYaml }}
{{- range (index .root.Values .component).topologySpreadConstraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $constraint | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* Resources, plus the GPU limit when the component's gpu.enabled is set. */}}
{{- define "mmserve.resources" -}}
{{- $values := index .root.Values .component }}
{{- $resources := deepCopy (default dict $values.resources) }}
{{- if and (hasKey $values "gpu") $values.gpu.enabled }}
{{- $limits := default dict $resources.limits }}
{{- $_ := set $limits $values.gpu.resourceName $values.gpu.count }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/*
A probe from values. Kubelet gRPC probes cannot speak TLS, so with tls.enabled a `grpc` handler
becomes an exec one that asks the health service over (m)TLS from inside the pod, naming the
headless Service the certificate is issued for.
*/}}
{{- define "mmserve.probe" -}}
{{- $probe := deepCopy (index (index .root.Values .component) .probe) }}
{{- if and .root.Values.tls.enabled $probe.grpc }}
{{- $dir := .root.Values.tls.mountPath }}
{{- $name := printf "%s.%s.svc" (include "mmserve.headlessName" .) .root.Release.Namespace }}
{{- $check := printf "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as s;r=lambda n:open('%s/'+n,'rb').read();c=grpc.ssl_channel_credentials(r('ca.crt'),r('tls.key'),r('tls.crt'));ch=grpc.secure_channel('localhost:%v',c,options=[('grpc.ssl_target_name_override','%s')]);sys.exit(s.HealthStub(ch).Check(h.HealthCheckRequest(),timeout=%v).status!=h.HealthCheckResponse.SERVING)" $dir $probe.grpc.port $name (default 1 $probe.timeoutSeconds) }}
{{- $_ := unset $probe "grpc" }}
{{- $_ := set $probe "exec" (dict "command" (list "python" "-c" $check)) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
