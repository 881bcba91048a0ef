{{/* Checks across values that values.schema.json cannot express; each failure says what to set. */}}
{{- define "mmserve.validate" -}}
{{- $v := .Values }}
{{- if $v.modelStorage.initContainer.enabled }}
{{- if eq $v.modelStorage.volume "none" }}
{{- fail "modelStorage.initContainer.enabled needs modelStorage.volume set to emptyDir or pvc" }}
{{- end }}
{{- if not $v.modelStorage.initContainer.command }}
{{- fail "modelStorage.initContainer.command is required when the init container is enabled" }}
{{- end }}
{{- end }}
{{- if and (eq $v.fusion.heads.source "configMap") (not $v.fusion.heads.configMapName) }}
{{- fail "fusion.heads.configMapName is required when fusion.heads.source is configMap" }}
{{- end }}
{{- if and (eq $v.fusion.heads.source "configMap") (not $v.fusion.heads.names) }}
{{- fail "fusion.heads.names must list the heads in the ConfigMap" }}
{{- end }}
{{- if and (eq $v.fusion.heads.source "pvc") (not $v.fusion.heads.existingClaim) }}
{{- fail "fusion.heads.existingClaim is required when fusion.heads.source is pvc" }}
{{- end }}
{{- if and (eq $v.fusion.heads.source "image") (not (and $v.fusion.heads.image.repository (or $v.fusion.heads.image.tag $v.fusion.heads.image.digest))) }}
{{- fail "fusion.heads.image.repository and a tag or digest are required when fusion.heads.source is image" }}
{{- end }}
{{- if and $v.tracing.enabled (not $v.tracing.endpoint) }}
{{- fail "tracing.endpoint (the OTLP collector's URL) is required when tracing.enabled" }}
{{- end }}
{{- if and $v.gateway.auth.apiKeys $v.gateway.auth.existingSecret }}
{{- fail "set gateway.auth.apiKeys or gateway.auth.existingSecret, not both" }}
{{- end }}
{{- $public := or $v.gateway.ingress.enabled (has $v.gateway.service.type (list "LoadBalancer" "NodePort")) }}
{{- if and $public (not $v.gateway.allowPublicWithoutProtection) }}
{{- if not (or $v.gateway.auth.apiKeys $v.gateway.auth.existingSecret) }}
{{- fail "the gateway is exposed (an Ingress, or a LoadBalancer/NodePort Service) without API keys: set gateway.auth.existingSecret, or gateway.allowPublicWithoutProtection=true if something in front authenticates" }}
{{- end }}
{{- if and $v.gateway.ingress.enabled (not $v.gateway.ingress.tls) }}
{{- fail "gateway.ingress has no tls: set gateway.ingress.tls, or gateway.allowPublicWithoutProtection=true if TLS ends in front of the Ingress" }}
{{- end }}
{{- end }}
{{- if $v.tls.enabled }}
{{- if $v.tls.perComponent.enabled }}
{{- if $v.tls.existingSecret }}
{{- fail "set tls.existingSecret (one shared identity) or tls.perComponent.enabled, not both" }}
{{- end }}
{{- $named := keys $v.tls.perComponent.existingSecrets | sortAlpha }}
{{- if and $named (ne (join "," $named) "audio,fusion,gateway,text,vision") }}
{{- fail "tls.perComponent.existingSecrets must name all of text, vision, audio, fusion and gateway (they must share a CA), or none" }}
{{- end }}
{{- else if not $v.tls.existingSecret }}
{{- fail "tls.existingSecret is required when tls.enabled (tls.crt, tls.key, ca.crt), unless tls.perComponent.enabled" }}
{{- end }}
{{- end }}
{{- end }}
