"""scripts/lib.sh's image references: what every node is told to run (docs/operations.md, "The image
registry"). The naming functions are pure and run as they are; deploy_ref runs against a test double
of the docker CLI (the unit tier has no Docker engine; tests/e2e and tests/lab push for real)."""

import os
import subprocess

import pytest

from tests.helpers import ROOT

DIGEST = "sha256:" + "ab" * 32


def lib(command, registry="", path=None, **extra):
    """Run `command` in bash with scripts/lib.sh sourced; (exit status, stdout, stderr)."""
    env = {**os.environ, "REGISTRY": registry, **extra}
    if path:
        env["PATH"] = f"{path}:{env['PATH']}"
    result = subprocess.run(["bash", "-c", f". {ROOT}/scripts/lib.sh && {command}"], env=env,
                            capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout.strip(), result.stderr


@pytest.mark.parametrize("registry, image, expected", [
    ("", "wsapp:20260101-abc", "127.0.0.1:5000/wsapp:20260101-abc"),
    ("", "wsapp-local/nginx:bookworm", "127.0.0.1:5000/wsapp-local/nginx:bookworm"),
    ("", "wsapp", "127.0.0.1:5000/wsapp:latest"),
    ("", "localhost:5000/team/x", "127.0.0.1:5000/team/x:latest"),
    ("", "127.0.0.1:5000/wsapp:1", "127.0.0.1:5000/wsapp:1"),
    ("registry.example.com/team/", "other.example:443/x/wsapp:2", "registry.example.com/team/x/wsapp:2"),
    ("registry.example.com/team", "registry.example.com/team/wsapp:2", "registry.example.com/team/wsapp:2"),
])
def test_registry_tag_keeps_path_and_tag_under_the_registry(registry, image, expected):
    assert lib(f"registry_tag {image}", registry)[1] == expected


@pytest.mark.parametrize("image, expected", [
    ("wsapp:20260101-abc1234", "20260101-abc1234"),
    ("127.0.0.1:5000/wsapp:v2", "v2"),
    (f"127.0.0.1:5000/wsapp@{DIGEST}", "sha256-abababababab"),
    (f"127.0.0.1:5000/wsapp:v3@{DIGEST}", "v3"),
    ("127.0.0.1:5000/wsapp", "latest"),
])
def test_image_version_is_the_tag_or_the_digest(image, expected):
    assert lib(f"image_version {image}")[1] == expected


def test_pick_digest_finds_the_repository_or_anything_upstream():
    digests = f"127.0.0.1:5000/wsapp-local/nginx@{DIGEST} nginx@sha256:{'cd' * 32}"
    assert lib(f"pick_digest - {digests}")[1] == f"nginx@sha256:{'cd' * 32}"
    assert lib(f"pick_digest 127.0.0.1:5000/wsapp-local/nginx {digests}")[1] == \
        f"127.0.0.1:5000/wsapp-local/nginx@{DIGEST}"
    assert lib(f"pick_digest 127.0.0.1:5000/wsapp {digests}")[1] == ""
    assert lib(f"pick_digest - 127.0.0.1:5000/wsapp@{DIGEST}")[1] == ""


FAKE_DOCKER = r"""#!/usr/bin/env bash
# Test double of the docker CLI: images listed in $state/images ("NAME DIGESTS..."), a push adds
# the registry's digest.
state=$(dirname "$0")
echo "$*" >>"$state/calls"
case "$1 ${2:-}" in
  "image inspect")
    line=$(grep "^${@: -1} " "$state/images") || exit 1
    [[ $* == *RepoDigests* ]] && echo "${line#* }"; true ;;
  "tag "*) echo "$3 $(grep "^$2 " "$state/images" | cut -d' ' -f2-)" >>"$state/images" ;;
  "pull -q") grep -q "^$3 " "$state/images" || { echo "manifest unknown" >&2; exit 1; } ;;
  "push -q") sed -i "s|^$3 \(.*\)|$3 \1 ${3%:*}@sha256:""" + "ef" * 32 + r"""|" "$state/images" ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def docker(tmp_path):
    path = tmp_path / "docker"
    path.write_text(FAKE_DOCKER)
    path.chmod(0o755)
    (tmp_path / "images").write_text(f"nginx:1.27 nginx@{DIGEST}\nwsapp:v1 \n")
    return tmp_path


def test_a_pulled_official_image_is_deployed_by_its_own_digest_without_a_push(docker):
    status, out, err = lib("deploy_ref nginx:1.27", path=docker)
    assert (status, out) == (0, f"nginx@{DIGEST}"), err
    assert "push" not in (docker / "calls").read_text()


def test_an_image_built_here_is_pushed_and_deployed_by_the_push_digest(docker):
    status, out, err = lib("deploy_ref wsapp:v1", path=docker)
    assert (status, out) == (0, f"127.0.0.1:5000/wsapp@sha256:{'ef' * 32}"), err
    assert "push -q 127.0.0.1:5000/wsapp:v1" in (docker / "calls").read_text()


def test_a_registry_name_not_present_here_is_left_for_the_nodes_to_pull(docker):
    assert lib("deploy_ref 127.0.0.1:5000/wsapp:v9", path=docker)[:2] == (0, "127.0.0.1:5000/wsapp:v9")
    assert lib(f"deploy_ref wsapp@{DIGEST}", path=docker)[:2] == (0, f"wsapp@{DIGEST}")


def test_an_image_another_node_pushed_is_taken_from_the_registry(docker):
    with open(docker / "images", "a") as images:
        images.write(f"127.0.0.1:5000/wsapp:v2 127.0.0.1:5000/wsapp@{DIGEST}\n")
    assert lib("deploy_ref wsapp:v2", path=docker)[:2] == (0, f"127.0.0.1:5000/wsapp@{DIGEST}")


def test_a_registry_that_does_not_answer_fails_the_push_at_once(docker):
    """A proxy whose registry is away answers 502: no push is tried (the engine would retry for minutes)."""
    fake = (docker / "docker").read_text().replace('echo "manifest unknown"', 'echo "502 Bad Gateway"')
    (docker / "docker").write_text(fake)
    status, _, err = lib("deploy_ref wsapp:v1", path=docker, REGISTRY_WAIT="2")
    assert status != 0
    assert "no registry answers at 127.0.0.1:5000" in err
    assert "push" not in (docker / "calls").read_text()


def test_a_missing_image_is_an_error_naming_it(docker):
    status, _, err = lib("deploy_ref wsapp:gone", path=docker)
    assert status != 0
    assert "wsapp:gone is not present on this node, nor in the registry as 127.0.0.1:5000/wsapp:gone" in err
