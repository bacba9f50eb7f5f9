"""promote.sh's interrupt path, against a test double of the docker CLI.

The unit tier has no Docker engine, so `docker` here is a small shell script that plays a swarm
with blue active and logs every call. The end-to-end tier runs the same path on a real swarm
(tests/e2e/test_release.py); this test makes one timing deterministic: the signal arriving while
a health check runs with its output sent to /dev/null.
"""

import os
import signal

from tests.helpers import ROOT, reap, start_interruptible, wait_until

FAKE_DOCKER = r"""#!/usr/bin/env bash
# Test double of the docker CLI: blue is active, green comes and goes with stack deploy/rm.
state=$(dirname "$0")
echo "$*" >>"$state/calls"
case "$1 ${2:-}" in
  "info --format") echo true ;;
  "info ") ;;
  "network inspect" | "image inspect") ;;
  "ps -q") echo nginx1 ;;
  "ps -aq") ;;
  "exec nginx1") [[ $# -gt 3 ]] && echo "$4" >"$state/active" || cat "$state/active" ;;
  "stack ls") echo wsapp-blue; [[ -e $state/green ]] && echo wsapp-green; true ;;
  "stack deploy") touch "$state/green" ;;
  "stack rm") rm -f "$state/green" ;;
  "service ls") ;;
  "service inspect") [[ $* == *Replicas* ]] && echo 2 || echo wsapp:old ;;
  "service ps") touch "$state/checking"; sleep 1; echo "Starting 1 second ago" ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 2 ;;
esac
"""


def test_interrupt_during_a_health_check_restores_and_says_so(tmp_path):
    """SIGINT while the check's output goes to /dev/null: the trap still reports, and green goes."""
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    (tmp_path / "active").write_text("blue\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "LOCK_FILE": str(tmp_path / "lock"),
           "HEALTH_TIMEOUT": "60"}
    promote = start_interruptible([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env)
    try:
        checking = tmp_path / "checking"
        wait_until(lambda: checking.exists() or promote.poll() is not None, 20,
                   "promote.sh to check the new color's health", interval=0.05)
        assert checking.exists(), "promote.sh never checked the new color's health"
        promote.send_signal(signal.SIGINT)  # lands while `docker service ps` (1 s) runs
        output, _ = promote.communicate(timeout=30)
    finally:
        reap(promote)
    assert promote.returncode == 130, output
    assert "promotion failed at state 'deployed'; restoring blue" in output
    assert "blue serves, as before the promotion." in output
    assert not (tmp_path / "green").exists()
    calls = (tmp_path / "calls").read_text()
    assert "stack rm wsapp-green" in calls
    assert "switch-color green" not in calls
