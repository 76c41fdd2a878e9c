{{- define "dllmserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dllmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dllmserve.labels" -}}
{{ include "dllmserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* REPOSITORY-ROLE:TAG; the repository is required: Kubernetes pulls from a registry. */}}
{{- define "dllmserve.image" -}}
{{- $repo := required "image.repository is required: where you pushed the images, e.g. --set image.repository=registry.example.com/team/dllmserve" .root.Values.image.repository -}}
{{- printf "%s-%s:%s" $repo .role (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "dllmserve.redisSecret" -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "dllmserve.fullname" .)) -}}
{{- end -}}

{{- define "dllmserve.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "dllmserve.fullname" .)) -}}
{{- end -}}

{{- define "dllmserve.modelsClaim" -}}
{{- .Values.models.existingClaim | default (printf "%s-models" (include "dllmserve.fullname" .)) -}}
{{- end -}}

{{/* The pod and container security settings of every dLLM-Serve process (uid of the images). */}}
{{- define "dllmserve.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "dllmserve.containerSecurity" -}}
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
{{- end -}}

{{- define "dllmserve.redisUrlEnv" -}}
- name: DLLMSERVE_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ include "dllmserve.redisSecret" . }}, key: redis-url}}
{{- end -}}
