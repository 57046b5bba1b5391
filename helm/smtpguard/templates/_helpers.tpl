{{/* Names */}}
{{- define "smtpguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "smtpguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "smtpguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "smtpguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smtpguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "smtpguard.labels" -}}
helm.sh/chart: {{ include "smtpguard.chart" . }}
{{ include "smtpguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smtpguard
{{- end -}}

{{- define "smtpguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "smtpguard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "smtpguard.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* "true" when any listener uses TLS */}}
{{- define "smtpguard.tlsUsed" -}}
{{- range .Values.listeners -}}{{- if ne .tls "none" -}}true{{- end -}}{{- end -}}
{{- end -}}

{{- define "smtpguard.tlsSecretName" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "smtpguard.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "smtpguard.policyConfigMapName" -}}
{{- if .Values.policy.existingConfigMap -}}
{{- .Values.policy.existingConfigMap -}}
{{- else -}}
{{- printf "%s-policies" (include "smtpguard.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "smtpguard.terminationGracePeriodSeconds" -}}
{{- $min := add .Values.preStopSleepSeconds .Values.shutdownGraceSeconds -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $min 15 -}}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $min) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + shutdownGraceSeconds (%v): the kubelet counts the preStop hook against the grace period and SIGKILLs sessions still in DATA" .Values.terminationGracePeriodSeconds $min) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Port of the upstream URL (default 25, 465 for smtps) */}}
{{- define "smtpguard.upstreamPort" -}}
{{- $u := urlParse .Values.upstream.url -}}
{{- $parts := splitList ":" $u.host -}}
{{- if gt (len $parts) 1 -}}
{{- last $parts -}}
{{- else if eq $u.scheme "smtps" -}}
465
{{- else -}}
25
{{- end -}}
{{- end -}}

{{- define "smtpguard.storeIsRedis" -}}
{{- if or .Values.store.existingSecret.name (hasPrefix "redis" .Values.store.url) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the pod mounts a policy directory (otherwise: the embedded default policy) */}}
{{- define "smtpguard.policyDir" -}}
{{- if or .Values.policy.files .Values.policy.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{/* The smtpguard config file (validated by smtpguard.config.Config; see `smtpguard check`) */}}
{{- define "smtpguard.config" -}}
hostname: {{ .Values.hostname | quote }}
{{- with .Values.authservId }}
authserv_id: {{ . | quote }}
{{- end }}
listeners:
{{- range .Values.listeners }}
  - name: {{ .name | quote }}
    address: {{ printf "0.0.0.0:%v" .port | quote }}
    tls:
      mode: {{ .tls | quote }}
      {{- if ne .tls "none" }}
      cert: /etc/smtpguard/tls/tls.crt
      key: /etc/smtpguard/tls/tls.key
      min_version: {{ $.Values.tls.minVersion | quote }}
      {{- end }}
    proxy_protocol:
      enabled: {{ eq $.Values.clientIP.mode "proxyProtocol" }}
      {{- if eq $.Values.clientIP.mode "proxyProtocol" }}
      trusted_networks: {{ toJson $.Values.clientIP.proxyProtocol.trustedNetworks }}
      timeout: {{ $.Values.clientIP.proxyProtocol.timeout }}
      {{- end }}
    {{- with .limits }}
    limits:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .normalizeNetworks }}
    normalize_networks: {{ toJson . }}
    {{- end }}
{{- end }}
upstream:
  url: {{ .Values.upstream.url | quote }}
  xclient: {{ .Values.upstream.xclient | quote }}
  xforward: {{ .Values.upstream.xforward | quote }}
  starttls: {{ .Values.upstream.starttls | quote }}
  tls_verify: {{ .Values.upstream.tlsVerify }}
  {{- with .Values.upstream.heloName }}
  helo_name: {{ . | quote }}
  {{- end }}
  connect_timeout: {{ .Values.upstream.connectTimeout }}
  command_timeout: {{ .Values.upstream.commandTimeout }}
  data_timeout: {{ .Values.upstream.dataTimeout }}
  ready_grace: {{ .Values.upstream.readyGrace }}
policy:
  {{- if include "smtpguard.policyDir" . }}
  dir: /etc/smtpguard/policies
  {{- end }}
  watch: {{ and (eq .Values.policy.reload "watch") (not (empty (include "smtpguard.policyDir" .))) }}
metrics:
  listen: {{ printf "0.0.0.0:%v" .Values.metrics.port | quote }}
dns:
  nameservers: {{ toJson .Values.dns.nameservers }}
  timeout: {{ .Values.dns.timeout }}
store:
  # SMTPGUARD_STORE (from store.existingSecret) overrides this when set
  url: {{ ternary "memory" .Values.store.url (not (empty .Values.store.existingSecret.name)) | quote }}
max_connections: {{ .Values.maxConnections }}
data_memory_budget: {{ .Values.dataMemoryBudget | quote }}
shutdown_grace: {{ printf "%vs" .Values.shutdownGraceSeconds }}
logging:
  format: {{ .Values.logging.format | quote }}
  level: {{ .Values.logging.level | quote }}
  decisions: {{ .Values.logging.decisions }}
{{- end -}}
