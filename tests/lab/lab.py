"""The multi-node lab (scripts/lab.sh) as the lab tier's tests use it: docker and scripts against any
node, the edges' addresses, and the faults lab.sh can cause (a node dying, an engine restarting)."""

import json
import os
import subprocess
import time
import urllib.request

from tests.helpers import ROOT

LAB_ID = os.environ.get("LAB_ID", "0")
NODES = int(os.environ.get("LAB_NODES", "4"))
EDGES = (1, 2)


def checked(result, check):
    if check and result.returncode != 0:
        raise AssertionError(f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


class Lab:
    def __init__(self, lab_id=LAB_ID, nodes=NODES):
        self.id = lab_id
        self.nodes = nodes

    def env(self, node):
        """The environment that points docker, promote.sh and scripts/*.sh at node N."""
        env = dict(os.environ, LAB_ID=self.id, LAB_NODES=str(self.nodes))
        for line in self.script("env", str(node)).stdout.split():
            if "=" in line:
                key, _, value = line.partition("=")
                env[key] = value
        return env

    def script(self, *args, timeout=900, check=True):
        env = dict(os.environ, LAB_ID=self.id, LAB_NODES=str(self.nodes))
        return checked(subprocess.run([f"{ROOT}/scripts/lab.sh", *args], cwd=ROOT, capture_output=True,
                                      text=True, timeout=timeout, env=env), check)

    def run(self, node, args, timeout=600, check=True, stdin=None, **extra):
        """Run a command of the repository (promote.sh, scripts/...) against node N; `stdin`, text for
        its standard input."""
        return checked(subprocess.run(args, cwd=ROOT, env=dict(self.env(node), **extra), capture_output=True,
                                      text=True, timeout=timeout, input=stdin), check)

    def docker(self, node, *args, timeout=120, check=True, stdin=None):
        return self.run(node, ["docker", *args], timeout=timeout, check=check, stdin=stdin).stdout.strip()

    def addr(self, node):
        return f"10.99.{self.id}.{10 + node}"

    def url(self, node):
        return f"http://{self.addr(node)}"

    def ws_url(self, node):
        return f"ws://{self.addr(node)}"

    def version(self, node, timeout=5):
        with urllib.request.urlopen(self.url(node) + "/version", timeout=timeout) as response:
            return json.loads(response.read())

    def manager(self):
        """A manager that answers (node 1 unless it is the one being hurt)."""
        for node in range(1, self.nodes + 1):
            if self.docker(node, "info", "--format", "{{.Swarm.ControlAvailable}}", check=False) == "true":
                return node
        raise AssertionError("no manager of the lab answers")

    def tasks(self, service, node=None):
        """{task name: node host name} of the service's running tasks."""
        out = self.docker(node or self.manager(), "service", "ps", service, "--filter",
                          "desired-state=running", "--format", "{{.Name}} {{.Node}} {{.CurrentState}}")
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if " Running " in f" {line} "}

    def next_image(self, node, tag):
        """A new version of the running app image, tagged `tag` on node N (promote.sh run there pushes
        it and deploys its digest; the version is the tag)."""
        service = f"wsapp-{self.version(1)['color']}_app"
        image = self.docker(self.manager(), "service", "inspect", "--format",
                            "{{.Spec.TaskTemplate.ContainerSpec.Image}}", service)
        if "@" in image:
            self.docker(node, "pull", "-q", image, timeout=300)
        self.docker(node, "tag", image, tag)
        return tag

    def node_name(self, node):
        return f"wsapp-lab{self.id}-n{node}"

    def wait(self, check, timeout, what, interval=1.0):
        started = time.monotonic()
        while not check():
            assert time.monotonic() - started < timeout, f"timed out after {timeout}s waiting for {what}"
            time.sleep(interval)
        return time.monotonic() - started

    def unsettled(self):
        """What keeps the lab from being whole: nodes not Ready, services below their count (jobs aside)."""
        manager = self.manager()
        wrong = [f"node {line}" for line in self.docker(
            manager, "node", "ls", "--format", "{{.Hostname}} {{.Status}}").splitlines()
            if not line.endswith(" Ready")]
        services = self.docker(manager, "service", "ls", "--format", "{{.Name}} {{.Mode}} {{.Replicas}}")
        for line in services.splitlines():
            name, mode, replicas = line.split(maxsplit=2)
            running, _, desired = replicas.split()[0].partition("/")
            if not mode.endswith("-job") and running != desired:
                wrong.append(f"{name} {replicas}")
        return wrong

    def settle(self, timeout=240):
        """Wait (bounded) until every node is Ready and every service runs all its tasks: a fault a test
        caused (an engine restarted, a node killed and revived) must be over before the next test starts,
        and a lab that does not heal fails here, naming what is missing, instead of in the next test."""
        started = time.monotonic()
        while wrong := self.unsettled():
            assert time.monotonic() - started < timeout, f"the lab is not whole after {timeout}s: {wrong}"
            time.sleep(2)
        return time.monotonic() - started
