#!/usr/bin/env bash
# build-app.sh [TAG]: build the app image from the working tree (default wsapp:dev) on the best
# base image available (scripts/images.sh). The image's APP_VERSION is TAG's part after the colon.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  case ${1:-} in
    -h | --help)
      sed -n '2,3s/^# //p' "${BASH_SOURCE[0]}"
      return
      ;;
    -*) die "unknown option '$1' (usage: scripts/build-app.sh [TAG])" ;;
  esac
  local tag=${1:-wsapp:dev}
  build_app_image "$tag"
  log "built $tag"
}

main "$@"
