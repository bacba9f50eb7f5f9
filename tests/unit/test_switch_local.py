"""release_tools.py switch-local against a test double of the Docker Engine API on a unix socket (the
unit tier has no engine; the lab tier, tests/lab/test_edges.py, runs it in a job on every edge node
of a real swarm): switch-color in every running Nginx of the node, one line each, a failure named."""

import importlib.util
import json
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

import pytest

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("release_tools", f"{ROOT}/scripts/release_tools.py")
release_tools = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_tools)


def frame(text, stream=1):
    data = text.encode()
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


@pytest.fixture
def engine(tmp_path):
    """The API of a node with the given Nginx containers and one exited job container; returns
    (socket path, state): state["nginx"] {id: exit code of switch-color}, state["calls"]."""
    state = {"nginx": {}, "calls": [], "execs": {}}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body):
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            state["calls"].append(f"GET {url.path}")
            if url.path == "/info":
                return self.reply(200, {"Name": "edge-1"})
            if url.path == "/containers/json":
                filters = json.loads(urllib.parse.parse_qs(url.query)["filters"][0])
                if filters["label"] == ["com.wsapp.job=edge"] and filters["status"] == ["exited"]:
                    return self.reply(200, [{"Id": "oldjob", "Names": ["/wsapp-edge-old"]}])
                if filters["label"] == ["com.docker.swarm.service.name=wsapp_nginx"]:
                    running = [{"Id": cid, "Names": [f"/wsapp_nginx.{cid}"]} for cid in state["nginx"]]
                    return self.reply(200, running)
                return self.reply(200, [])
            if url.path.startswith("/exec/"):
                cid, _ = state["execs"][url.path.split("/")[2]]
                return self.reply(200, {"Running": False, "ExitCode": state["nginx"][cid]})
            self.reply(404, {"message": "no such path"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            parts = self.path.split("/")
            state["calls"].append(f"POST {self.path} {json.dumps(body)}")
            if parts[1] == "containers" and parts[3] == "exec":
                exec_id = f"x{len(state['execs'])}"
                state["execs"][exec_id] = (parts[2], body["Cmd"])
                return self.reply(201, {"Id": exec_id})
            cid, cmd = state["execs"][parts[2]]
            if state["nginx"][cid]:
                return self.reply(200, frame("nginx -t failed; kept blue\n", stream=2))
            return self.reply(200, frame(f"switched blue -> {cmd[1]}\n"))

        def do_DELETE(self):
            state["calls"].append(f"DELETE {self.path}")
            self.reply(204, b"")

    path = str(tmp_path / "docker.sock")
    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, state
    server.shutdown()
    server.server_close()


def switch(sock, color="green"):
    return release_tools.main(["switch-local", "--service", "wsapp_nginx", "--color", color,
                               "--socket", sock])


def test_every_running_nginx_of_the_node_is_switched(engine, capsys):
    sock, state = engine
    state["nginx"] = {"a1": 0, "b2": 0}
    assert switch(sock) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["edge-1 wsapp_nginx.a1: exit 0: switched blue -> green",
                   "edge-1 wsapp_nginx.b2: exit 0: switched blue -> green"]
    assert [cmd for _, cmd in state["execs"].values()] == [["switch-color", "green"]] * 2
    assert "DELETE /containers/oldjob?force=1" in state["calls"], "an earlier job's container was left"


def test_a_failed_switch_fails_and_names_the_container(engine, capsys):
    sock, state = engine
    state["nginx"] = {"a1": 0, "b2": 1}
    assert switch(sock) == 1
    captured = capsys.readouterr()
    assert "edge-1 wsapp_nginx.b2: exit 1: nginx -t failed; kept blue" in captured.out
    assert "switch-color green failed in wsapp_nginx.b2" in captured.err


def test_a_node_without_a_running_nginx_is_not_a_failure(engine, capsys):
    """An Nginx that is starting reads the recorded color itself (stack/infra.yml)."""
    sock, _ = engine
    assert switch(sock) == 0
    assert "edge-1: no running Nginx of wsapp_nginx" in capsys.readouterr().out
