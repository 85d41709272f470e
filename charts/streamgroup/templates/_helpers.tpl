{{/* Names and labels shared by every template. */}}

{{- define "streamgroup.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamgroup.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "streamgroup.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "streamgroup.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamgroup.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "streamgroup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "streamgroup.operatorSelector" -}}
app.kubernetes.io/name: {{ include "streamgroup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "streamgroup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamgroup.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streamgroup.leaseName" -}}
{{- include "streamgroup.fullname" . }}-operator
{{- end -}}

{{- define "streamgroup.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The rules the operator needs on StreamGroups, their Deployments, pods and Secrets: nothing more. */}}
{{- define "streamgroup.operatorRules" -}}
- apiGroups: ["streamgroup.io"]
  resources: ["streamgroups"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["streamgroup.io"]
  resources: ["streamgroups/status"]
  verbs: ["get", "patch"]
# list and watch: the resync reads replicas from a watch of the Deployments it made (by label), not a GET each.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events: one per incident, its count patched while it lasts (no list: the operator remembers its own).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
