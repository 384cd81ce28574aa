{{/* Names: everything is <release>-<component>[-<team>]; the rendered hub settings depend on it. */}}
{{- define "cubelab.name" -}}{{ .Release.Name }}{{- end -}}

{{- define "cubelab.labels" -}}
app.kubernetes.io/name: cubelab
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/*
A secret value, base64: the one already in the cluster (so upgrades keep passwords), else a new random one.
Arguments: dict "ctx" $ "name" secretName "key" key "length" n
*/}}
{{- define "cubelab.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (.length | int) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Stop early on values made for another release or a malformed team list. */}}
{{- define "cubelab.validate" -}}
{{- if and .Values.renderedForRelease (ne .Values.renderedForRelease .Release.Name) -}}
{{- fail (printf "these values were rendered for release %q, not %q: run `cubelab render helm --release %s`" .Values.renderedForRelease .Release.Name .Release.Name) -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.teams -}}
{{- if hasKey $seen .name -}}{{- fail (printf "team %q is listed twice in teams" .name) -}}{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- end -}}

{{/* The team names, space-separated (a change rolls the S3 pod so SeaweedFS reads new identities). */}}
{{- define "cubelab.teamNames" -}}
{{- $names := list -}}
{{- range .Values.teams }}{{ $names = append $names .name }}{{ end -}}
{{- join " " $names -}}
{{- end -}}

{{- define "cubelab.podSecurity" -}}
runAsNonRoot: true
runAsUser: 1001
runAsGroup: 1001
fsGroup: 1001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "cubelab.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/* role -> label selector of the pods platform_tests' fault tests delete (JSON); {team} is filled in by them. */}}
{{- define "cubelab.faultSelectors" -}}
{{- $r := .Release.Name -}}
{{- $s := dict "hub" (printf "component=hub,release=%s" $r) "tracking" (printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=tracking,cubelab.io/team={team}" $r) -}}
{{- if .Values.postgres.bundled }}{{ $_ := set $s "postgres" (printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=postgres" $r) }}{{ end -}}
{{- if .Values.s3.bundled }}{{ $_ := set $s "s3" (printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=s3" $r) }}{{ end -}}
{{- toJson $s -}}
{{- end -}}
