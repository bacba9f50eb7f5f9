#!/bin/sh
# The registry proxy's command (stack/registry.yml): only this node's own engine may use it. It
# adds no password: engines send their own (docs/security.md, "The registry"), so a container of
# this node that reaches the port (from the same gateway address, see below) gets 401.
# The port is published on every address of the node (Swarm's host mode binds them all); an
# engine's connection to 127.0.0.1:PORT reaches the proxy from the gateway of the node's
# docker_gwbridge (Docker's userland proxy), which is this container's default route.
# Other hosts get 403.
set -eu
gateway=$(awk '$2 == "00000000" && $3 != "00000000" { print $3; exit }' /proc/net/route)
[ -n "$gateway" ] || { echo "registry proxy: no default route, cannot tell this node's gateway" >&2; exit 64; }
# /proc/net/route holds it as little-endian hex: 010012AC is 172.18.0.1.
# shellcheck disable=SC2046  # four words on purpose
set -- $(echo "$gateway" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4 \3 \2 \1/')
printf 'allow 127.0.0.1;\nallow %d.%d.%d.%d;\ndeny all;\n' "0x$1" "0x$2" "0x$3" "0x$4" >/tmp/registry-allow.conf
exec nginx -c /etc/nginx/registry-proxy.conf -g 'daemon off;'
