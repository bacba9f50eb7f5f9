#!/bin/sh
# shellcheck disable=SC2016  # printf formats write nginx variables literally
# Nginx container command: keep the persisted active color (or start
# with DEFAULT_COLOR), then run nginx in the foreground.
set -eu
dir=/etc/nginx/active
mkdir -p "$dir"
if [ ! -s "$dir/color.conf" ]; then
  printf 'map "" $active_color { default "%s"; }\n' "${DEFAULT_COLOR:-blue}" > "$dir/color.conf"
fi
exec nginx -g 'daemon off;'
