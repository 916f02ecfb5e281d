{{/* Names and labels. */}}
{{- define "pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pipeline.fullname" -}}
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

{{- define "pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pipeline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pipeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pipeline
{{- end -}}

{{- define "pipeline.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* config.yaml of the ConfigMap: the `config` values as the settings file (PIPELINE_CONFIG). */}}
{{- define "pipeline.configData" -}}
config.yaml: |
{{ toYaml .Values.config | indent 2 }}
{{- with .Values.topics }}
topics.yaml: |
{{ . | indent 2 }}
{{- end }}
{{- end -}}

{{/* Env of every pipeline container (workers and the topics Job). */}}
{{- define "pipeline.env" -}}
- name: PIPELINE_CONFIG
  value: /etc/pipeline/config/config.yaml
{{- if .Values.topics }}
- name: TOPICS_FILE
  value: /etc/pipeline/config/topics.yaml
{{- end }}
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- range .Values.secretFiles }}
- name: {{ .env }}
  value: {{ printf "/etc/pipeline/secrets/%s/%s" .secretName .key | quote }}
{{- end }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Volumes shared by the workers and the topics Job: the ConfigMap and the mounted Secret files. */}}
{{- define "pipeline.configVolumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
{{- range $secretName, $keys := .secrets }}
- name: {{ printf "secret-%s" $secretName | replace "." "-" | trunc 63 | trimSuffix "-" }}
  secret:
    secretName: {{ $secretName }}
    defaultMode: 0440
    items:
{{- range $keys }}
      - key: {{ . }}
        path: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "pipeline.configMounts" -}}
- name: config
  mountPath: /etc/pipeline/config
  readOnly: true
{{- range $secretName, $keys := .secrets }}
- name: {{ printf "secret-%s" $secretName | replace "." "-" | trunc 63 | trimSuffix "-" }}
  mountPath: {{ printf "/etc/pipeline/secrets/%s" $secretName }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* secretFiles grouped as {secretName: [key, ...]} (as JSON, for fromJson). */}}
{{- define "pipeline.secretFileGroups" -}}
{{- $groups := dict -}}
{{- range .Values.secretFiles -}}
{{- $keys := get $groups .secretName | default list -}}
{{- if not (has .key $keys) -}}
{{- $_ := set $groups .secretName (append $keys .key) -}}
{{- end -}}
{{- end -}}
{{- toJson $groups -}}
{{- end -}}

{{/* The largest replica count that can consume: the ingest topic's partitions. */}}
{{- define "pipeline.maxReplicas" -}}
{{- min (int .Values.autoscaling.maxReplicas) (int .Values.config.kafka.topic_partitions) -}}
{{- end -}}
