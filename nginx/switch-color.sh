#!/bin/sh
# shellcheck disable=SC2016  # printf formats write nginx variables literally
# switch-color COLOR: make COLOR the active color. Writes the include, checks the whole
# configuration with `nginx -t`, restores the previous include if the check fails, and
# reloads gracefully (never a restart). `switch-color` with no argument prints the color.
# Self-contained (no scripts/lib.sh): it runs inside the Nginx container, under /bin/sh.
set -eu
dir=${ACTIVE_DIR:-/tmp/nginx/active}  # overridable for tests/unit/test_switch_color.py
current=$(sed -n 's/.*default "\(.*\)";.*/\1/p' "$dir/color.conf")
if [ $# -eq 0 ]; then
  echo "$current"
  exit 0
fi
case "$1" in
  blue|green) ;;
  *) echo "switch-color: COLOR must be blue or green, got '$1'" >&2; exit 64 ;;
esac
# Temporary files beside the include (same file system, so each mv is an atomic rename), named so
# that nginx.conf's `include /tmp/nginx/active/*.conf` does not read them.
cp "$dir/color.conf" "$dir/color.conf.previous"
printf 'map "" $active_color { default "%s"; }\n' "$1" > "$dir/color.conf.next"
mv "$dir/color.conf.next" "$dir/color.conf"
if ! nginx -t -q; then
  mv "$dir/color.conf.previous" "$dir/color.conf"
  echo "switch-color: nginx -t failed; kept $current" >&2
  exit 1
fi
nginx -s reload
echo "switched $current -> $1"
