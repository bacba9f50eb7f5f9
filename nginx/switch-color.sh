#!/bin/sh
# shellcheck disable=SC2016  # printf formats write nginx variables literally
# switch-color COLOR: make COLOR the active color. Writes the include, checks the whole
# configuration with `nginx -t`, restores the previous include if the check fails, and
# reloads gracefully (never a restart). `switch-color` with no argument prints the color.
set -eu
dir=/etc/nginx/active
current=$(sed -n 's/.*default "\(.*\)";.*/\1/p' "$dir/color.conf")
if [ $# -eq 0 ]; then
  echo "$current"
  exit 0
fi
case "$1" in
  blue|green) ;;
  *) echo "switch-color: COLOR must be blue or green, got '$1'" >&2; exit 64 ;;
esac
cp "$dir/color.conf" /tmp/color.conf.previous
printf 'map "" $active_color { default "%s"; }\n' "$1" > /tmp/color.conf.next
mv /tmp/color.conf.next "$dir/color.conf"
if ! nginx -t -q; then
  mv /tmp/color.conf.previous "$dir/color.conf"
  echo "switch-color: nginx -t failed; kept $current" >&2
  exit 1
fi
nginx -s reload
echo "switched $current -> $1"
