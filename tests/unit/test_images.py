"""scripts/images.sh resolve: where no official image can be had, every image the stacks name comes from
a Debian-built stand-in (docs/operations.md, "Images without Docker Hub"), Postgres and its exporter
among them. Runs against a test double of the docker CLI (the unit tier has no engine): nothing is
present but the local base, every pull fails, every build succeeds and is recorded."""

import os
import re
import subprocess
from pathlib import Path

from tests.helpers import ROOT

ROOT = Path(ROOT)

FAKE_DOCKER = r"""#!/usr/bin/env bash
state=$(dirname "$0")
case "$1 $2" in
  "image inspect") [[ ${@: -1} == wsapp-local/debian-python:bookworm ]] ;;
  "pull --quiet") exit 1 ;;
  build\ *)
    while (($#)); do [[ $1 == -t ]] && echo "$2" >>"$state/built"; shift; done ;;
  *) echo "unexpected: docker $*" >&2; exit 3 ;;
esac
"""


def resolve(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_IMAGE")}
    env.update(PATH=f"{tmp_path}:{os.environ['PATH']}", PULL_TIMEOUT="5")
    result = subprocess.run([f"{ROOT}/scripts/images.sh", "resolve"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", result.stdout, re.M))
    built = (tmp_path / "built").read_text().split()
    return exports, built


def test_postgres_and_its_exporter_get_debian_stand_ins(tmp_path):
    exports, built = resolve(tmp_path)
    assert exports["POSTGRES_IMAGE"] == "wsapp-local/postgres:bookworm"
    assert exports["POSTGRES_EXPORTER_IMAGE"] == "wsapp-local/postgres-exporter:bookworm"
    assert {"wsapp-local/postgres:bookworm", "wsapp-local/postgres-exporter:bookworm"} <= set(built)


def test_every_image_the_stacks_name_is_resolved_and_every_stand_in_is_built(tmp_path):
    """A service added to a stack file without a stand-in would not run where Docker Hub is out of reach."""
    exports, built = resolve(tmp_path)
    named = set()
    for stack in ("infra.yml", "app.yml", "registry.yml"):
        named |= set(re.findall(r"\$\{(\w+_IMAGE)[:?}]", (ROOT / "stack" / stack).read_text()))
    named -= {"APP_IMAGE", "GRAFANA_IMAGE"}  # the app is built here; Debian has no Grafana
    assert named <= set(exports), named - set(exports)
    stand_ins = {path.name for path in (ROOT / "docker").iterdir() if (path / "Dockerfile").exists()}
    assert {f"wsapp-local/{name}:bookworm" for name in stand_ins} == set(built)
    for name in named:
        assert exports[name].startswith("wsapp-local/"), (name, exports[name])


def test_the_edge_exporter_runs_on_the_python_base_so_it_has_a_debian_stand_in_too(tmp_path):
    """The edge exporter is a script (a Swarm config) on the Python base image: no image of its own."""
    exports, _ = resolve(tmp_path)
    assert exports["EDGE_EXPORTER_IMAGE"] == exports["PYTHON_BASE_IMAGE"]
    assert exports["EDGE_EXPORTER_IMAGE"] == "wsapp-local/debian-python:bookworm"
