"""The image registry as stack/registry.yml configures it (issue 17): Debian's docker-registry (the
code of the stack's image, docker/registry) started on loopback with the service's environment.
Nothing is served without the password (the engines send their login; the proxies add none), and
whoever has it cannot delete what the colors run."""

import base64
import hashlib
import os
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

from testkit.processes import Process, free_port, port_answers
from tests.helpers import ROOT, require_command, wait_until

pytestmark = pytest.mark.integration

# docker/registry/Dockerfile's configuration, but for the storage directory and address the
# environment sets (as in the stack).
CONFIG = """version: 0.1
storage:
  filesystem:
    rootdirectory: /nonexistent
http:
  addr: :5000
"""


PASSWORD = "a random password"
AUTH = "Basic " + base64.b64encode(f"wsapp:{PASSWORD}".encode()).decode()


@pytest.fixture
def registry(tmp_path):
    binary = require_command("docker-registry", "the registry's configuration is tried on Debian's registry")
    with open(os.path.join(ROOT, "stack", "registry.yml")) as stack:
        environment = yaml.safe_load(stack)["services"]["registry"]["environment"]
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(CONFIG)
    # The secret's content as scripts/up.sh makes it: user wsapp, the password's bcrypt hash from
    # python3's crypt (deprecated, hence a process of its own).
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(subprocess.run(
        ["python3", "-W", "ignore", "-c", "import crypt, sys; print('wsapp:' + crypt.crypt(sys.stdin.read(), "
         "crypt.mksalt(crypt.METHOD_BLOWFISH)))"], input=PASSWORD, capture_output=True, text=True,
        check=True, timeout=30).stdout)
    assert htpasswd.read_text().startswith("wsapp:$2b$")
    assert environment["REGISTRY_AUTH_HTPASSWD_PATH"].startswith("/run/secrets/")
    env = {**os.environ, **environment, "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "data"),
           "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd)}
    with open(tmp_path / "registry.log", "wb") as log:
        process = Process([binary, "serve", config], env=env, log=log)
    try:
        wait_until(lambda: port_answers(port) or not process.running(), 15, "the registry to listen", 0.05)
        assert process.running(), (tmp_path / "registry.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def call(method, url, body=None, headers=False, auth=AUTH):
    """(status, body), and the response's headers when asked; with the password unless auth=None."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/octet-stream"})
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        answer = error.code, error.read(), error.headers
    return answer if headers else answer[:2]


def push_layer(registry, layer, auth=AUTH):
    """Upload a layer; the status of the upload's start, or of its end when it started."""
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    status, _, headers = call("POST", f"{registry}/v2/wsapp/blobs/uploads/", headers=True, auth=auth)
    if status != 202:
        return status
    location = headers["Location"]
    location = location if location.startswith("http") else registry + location
    return call("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}", layer, auth=auth)[0]


def test_nothing_is_served_without_the_password(registry):
    wrong = "Basic " + base64.b64encode(b"wsapp:guessed").decode()
    for auth in (None, wrong, "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()):
        status, _, headers = call("GET", f"{registry}/v2/", headers=True, auth=auth)
        assert status == 401 and "Basic" in headers["WWW-Authenticate"], (auth, status)
        assert push_layer(registry, b"pushed without the password", auth=auth) == 401, auth
    assert call("GET", f"{registry}/v2/")[0] == 200
    layer = b"pushed with the password"
    assert push_layer(registry, layer) == 201
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    assert call("GET", f"{registry}/v2/wsapp/blobs/{digest}", auth=None)[0] == 401
    assert call("GET", f"{registry}/v2/wsapp/blobs/{digest}") == (200, layer)


def test_a_pushed_layer_cannot_be_deleted(registry):
    layer = b"a layer the colors run"
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    status, _, headers = call("POST", f"{registry}/v2/wsapp/blobs/uploads/", headers=True)
    assert status == 202, "an upload started"
    location = headers["Location"]
    location = location if location.startswith("http") else registry + location
    status, body = call("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}", layer)
    assert status == 201, (status, body)
    for path in (f"/v2/wsapp/blobs/{digest}", f"/v2/wsapp/manifests/{digest}"):
        status, body = call("DELETE", registry + path)
        assert status == 405 and b"UNSUPPORTED" in body, (path, status, body)
    assert call("GET", f"{registry}/v2/wsapp/blobs/{digest}") == (200, layer)
