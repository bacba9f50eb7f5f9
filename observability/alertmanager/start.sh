#!/bin/sh
# Alertmanager container command (stack/infra.yml, service alertmanager): writes the configuration
# from the environment to the tmpfs and execs Alertmanager. One receiver, a webhook: every alert
# Prometheus sends (observability/prometheus/rules.yml) is POSTed there as Alertmanager's webhook
# JSON, and again when it resolves (docs/operations.md, "Alerts").
#   ALERT_WEBHOOK_URL      http(s) URL of the receiver (the release file's); empty: alerts are kept in
#                          Alertmanager and reach nobody (scripts/up.sh warns)
#   ALERT_GROUP_WAIT       how long the first alert of a group waits for others        (default 30s)
#   ALERT_GROUP_INTERVAL   how long before new alerts of a group already sent are sent (default 5m)
#   ALERT_REPEAT_INTERVAL  how long before a firing alert is sent again               (default 4h)
set -eu

die() { echo "alertmanager start: $*" >&2; exit 64; }

url=${ALERT_WEBHOOK_URL:-}
duration() {  # duration NAME VALUE: a Prometheus duration such as 30s, 5m, 4h
  case "$2" in
    "" | *[!0-9smh]* | [!0-9]*) die "$1 must be a duration such as 30s, 5m or 4h, got '$2'" ;;
  esac
}
group_wait=${ALERT_GROUP_WAIT:-30s}
group_interval=${ALERT_GROUP_INTERVAL:-5m}
repeat_interval=${ALERT_REPEAT_INTERVAL:-4h}
duration ALERT_GROUP_WAIT "$group_wait"
duration ALERT_GROUP_INTERVAL "$group_interval"
duration ALERT_REPEAT_INTERVAL "$repeat_interval"
case "$url" in
  "" | http://* | https://*) ;;
  *) die "ALERT_WEBHOOK_URL must be an http:// or https:// URL, got '$url'" ;;
esac
case "$url" in
  *[\'\"[:space:]]*) die "ALERT_WEBHOOK_URL must not contain quotes or spaces" ;;
esac

conf=${ALERTMANAGER_CONF:-/tmp/alertmanager.yml}
umask 077
{
  printf 'route:\n'
  printf '  receiver: webhook\n'
  printf '  group_by: [alertname, color, instance]\n'
  printf '  group_wait: %s\n  group_interval: %s\n  repeat_interval: %s\n' \
    "$group_wait" "$group_interval" "$repeat_interval"
  printf 'receivers:\n'
  printf '  - name: webhook\n'
  if [ -n "$url" ]; then
    printf '    webhook_configs:\n'
    printf "      - url: '%s'\n" "$url"
    printf '        send_resolved: true\n'
  fi
} >"$conf"
exec alertmanager --config.file="$conf" --storage.path=/alertmanager \
  --cluster.listen-address= --web.listen-address=:9093 "$@"
