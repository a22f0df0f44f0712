{{- define "cdp.name" -}}{{ .Release.Name }}-cdp{{- end }}

{{- define "cdp.labels" -}}
app.kubernetes.io/name: cdp
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cdp.secretName" -}}
{{- if .Values.secrets.existingSecret }}{{ .Values.secrets.existingSecret }}{{ else }}{{ include "cdp.name" . }}{{ end }}
{{- end }}

{{/* Settings and secrets of every cdp container, and the files it reads. */}}
{{- define "cdp.envFrom" -}}
- configMapRef:
    name: {{ include "cdp.name" . }}
- secretRef:
    name: {{ include "cdp.secretName" . }}
{{- end }}

{{- define "cdp.envFiles" -}}
- name: CDP_INGEST__SOURCES_FILE
  value: /etc/cdp/sources.json
- name: CDP_PRIVACY__MASTER_KEY_FILE
  value: /etc/cdp/master-keys.json
{{- end }}

{{- define "cdp.mounts" -}}
- name: cdp-files
  mountPath: /etc/cdp
  readOnly: true
{{- end }}

{{- define "cdp.volumes" -}}
volumes:
  - name: cdp-files
    secret:
      secretName: {{ include "cdp.secretName" . }}-files
      optional: true
{{- end }}
