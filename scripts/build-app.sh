#!/usr/bin/env bash
# build-app.sh [TAG]: build the app image from the working tree on the best available base.
set -Eeuo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local tag=${1:-wsapp:dev}
  build_app_image "$tag"
  log "built $tag"
}

main "$@"
