"""promote.sh's failure paths, against a test double of the docker CLI.

The unit tier has no Docker engine, so `docker` here is a small shell script that plays a swarm
with blue active and logs every call. The end-to-end tier runs the same paths on a real swarm
(tests/e2e/test_release.py); these tests make timings deterministic (a signal arriving while a
health check runs with its output sent to /dev/null, or while the restoration itself runs) and
reach failures a real swarm does not produce on demand (an undrain that fails).
"""

import fcntl
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, reap, start_interruptible, wait_until

ROOT_RELEASE_ENV = Path(ROOT) / "stack" / "release.env"

FAKE_DOCKER = r"""#!/usr/bin/env bash
# Test double of the docker CLI: blue is active (the Nginx service's label, in $state/active), green
# comes and goes with stack deploy/rm, Nginx is a global service and every edge agrees; a push gives
# the image a digest in the project's registry.
state=$(dirname "$0")
echo "$*" >>"$state/calls"
case "$1 ${2:-}" in
  "info --format") echo true ;;
  "info ") ;;
  "network inspect") ;;
  # down-edge: edge node n2 is down (Status Down); no other node is listed.
  "node ls") [[ -e $state/down-edge ]] && echo n2; true ;;
  "node inspect")
    if [[ $* == *Hostname* ]]; then echo "  edge2 (n2): down, active"; else echo "down active"; fi ;;
  "image inspect")
    # RepoDigests: none until pushed (an image built here), then the registry's.
    [[ $* == *RepoDigests* && -e $state/pushed ]] &&
      echo "127.0.0.1:5000/wsapp@sha256:$(printf 'ab%.0s' {1..32})"
    true ;;
  tag\ *) ;;
  "push -q") echo "$3" >>"$state/pushed" ;;
  # A name nobody pushed: refused by the registry, or for want of a login ($state/logged-out) until
  # `docker login` (which keeps the password it read in $state/login).
  "pull -q")
    [[ -e $state/logged-out && ! -e $state/login ]] && { echo "no basic auth credentials" >&2; exit 1; }
    echo "manifest unknown" >&2; exit 1 ;;
  "login --username") cat >"$state/login" ;;
  # registry_login's task: its container on this node, and the secret it has.
  "ps -q") echo login-container ;;
  "exec login-container") [[ $* == *" cat /run/secrets/registry_password" ]] && printf 's3cret' ;;
  # The swarm-wide lock (a Swarm config): create fails while it exists, as the managers make it,
  # and prints its ID ($state/swarm-lock-id; "other-id" for a lock a test wrote); rm takes the name
  # or that ID. Other configs (release_tools.py for the edge job) exist.
  "config create")
    if [[ $* == *wsapp-lock* ]]; then
      [[ -e $state/swarm-lock ]] && exit 1
      printf '%s\n' "$*" >"$state/swarm-lock"
      echo "lock-$$" | tee "$state/swarm-lock-id"
    fi ;;
  "config rm")
    [[ -e $state/swarm-lock ]] || exit 1
    # race-takeover: another command took the stale lock over just before this rm.
    [[ -e $state/race-takeover ]] && { rm "$state/race-takeover"; echo rival-id >"$state/swarm-lock-id"; }
    [[ $3 == wsapp-lock || $3 == "$(cat "$state/swarm-lock-id" 2>/dev/null || echo other-id)" ]] || exit 1
    rm -f "$state/swarm-lock" "$state/swarm-lock-id" ;;
  "config inspect")
    if [[ $* == *wsapp-lock* ]]; then
      [[ -e $state/swarm-lock ]] || exit 1
      if [[ $* == *since* ]]; then
        [[ $* == *.ID* ]] && printf '%s ' "$(cat "$state/swarm-lock-id" 2>/dev/null || echo other-id)"
        echo "${LOCK_SINCE:-$(date +%s)}"
      else
        echo "promote.sh pid 1 on elsewhere"
      fi
    fi ;;
  "ps -aq") ;;
  "stack ls") echo wsapp-blue; [[ -e $state/green ]] && echo wsapp-green; true ;;
  "stack deploy")
    # takeover-at-deploy: another command takes this one's lock over as stale while it runs.
    [[ -e $state/takeover-at-deploy ]] && echo rival-id >"$state/swarm-lock-id"
    echo "ALLOWED_HOSTS=$ALLOWED_HOSTS REPLICAS=$REPLICAS" >>"$state/deployed"
    echo "$APP_IMAGE $APP_VERSION" >>"$state/images"; touch "$state/green" ;;
  "stack rm") sleep "$(cat "$state/rm-delay" 2>/dev/null || echo 0)"; rm -f "$state/green" ;;
  "service ls") ;;
  "service inspect")
    if [[ $* == *active-color* ]]; then cat "$state/active"
    elif [[ $* == *switch-from* ]]; then cat "$state/switch-from" 2>/dev/null; true
    elif [[ $* == *Mode.Global*wsapp_nginx ]]; then echo global
    elif [[ $* == *Replicas* ]]; then echo 2
    else echo wsapp:old; fi ;;
  "service update")
    if [[ $* =~ active-color=([a-z]+) ]]; then
      [[ -e $state/fail-label-${BASH_REMATCH[1]} ]] && exit 1
      echo "${BASH_REMATCH[1]}" >"$state/active"
    fi
    if [[ $* =~ switch-from=([a-z]+) ]]; then echo "${BASH_REMATCH[1]}" >"$state/switch-from"
    elif [[ $* == *"--label-rm com.wsapp.switch-from"* ]]; then rm -f "$state/switch-from"; fi ;;
  "service ps")
    if [[ $* == *wsapp-ctl-* || $* == *wsapp-edge-* ]]; then echo "Complete 1 second ago"
    # The database jobs: fail-KIND and hang-KIND (KIND: lintmigrations, migrate) play a job that
    # fails or never ends.
    elif [[ $* =~ wsapp-(lintmigrations|migrate)- ]]; then
      kind=${BASH_REMATCH[1]}
      if [[ -e $state/fail-$kind ]]; then echo "Failed 1 second ago"
      elif [[ -e $state/hang-$kind ]]; then echo "Running 1 second ago"
      else echo "Complete 1 second ago"; fi
    elif [[ $* == *wsapp_nginx* ]]; then echo "Running 1 second ago"
    elif [[ -e $state/healthy ]]; then printf 'Running 1 second ago\nRunning 1 second ago\n'
    else touch "$state/checking"; sleep 1; echo "Starting 1 second ago"; fi ;;
  "service create") [[ $* == *" undrain "* && -e $state/fail-undrain ]] && exit 1; echo job ;;
  "service logs") [[ -e $state/hang-logs ]] && exec sleep 600; true ;;
  "service rm") ;;
  "run --rm")
    [[ $* == *wait-drained* && -e $state/fail-wait-drained ]] && exit 1
    # The release report (its script comes on stdin): its arguments kept, a page printed.
    if [[ $* == *--outcome* ]]; then
      [[ -e $state/fail-report ]] && { echo "<html>half" && exit 1; }
      printf '%s\n' "$@" >"$state/report-args"
      echo "<html>report</html>"
    fi ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 2 ;;
esac
"""


def release_file(directory, **settings):
    """stack/release.env with the release reports written to directory/reports (not the checkout), and
    other settings replaced."""
    settings = {"REPORT_DIR": f"{directory}/reports", **settings}
    lines = [line for line in ROOT_RELEASE_ENV.read_text().splitlines() if line.split("=")[0] not in settings]
    path = directory / "release.env"
    path.write_text("\n".join([*lines, *(f"{name}={value}" for name, value in settings.items())]) + "\n")
    return str(path)


@pytest.fixture
def fake(tmp_path):
    """The docker double on PATH, blue active; returns (directory, environment)."""
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    (tmp_path / "active").write_text("blue\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "LOCK_FILE": str(tmp_path / "lock"),
           "HEALTH_TIMEOUT": "60", "WATCH_SECONDS": "0", "DRAIN_SECONDS": "1",
           "RELEASE_ENV": release_file(tmp_path)}
    return tmp_path, env


def promote(env, *args, timeout=60):
    """./promote.sh ARGS (a release of wsapp:new by default) against the fake docker."""
    return subprocess.run([f"{ROOT}/promote.sh", *(args or ("--image", "wsapp:new"))], env=env,
                          capture_output=True, text=True, timeout=timeout)


def calls(state):
    path = state / "calls"
    return path.read_text() if path.exists() else ""


def interrupt_during_health_check(state, env, *signals, pause=0.0):
    """Start a promotion, send each signal once promote.sh checks green's health; the output."""
    promote = start_interruptible([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env)
    try:
        wait_until(lambda: (state / "checking").exists() or promote.poll() is not None, 20,
                   "promote.sh to check the new color's health", interval=0.05)
        assert (state / "checking").exists(), "promote.sh never checked the new color's health"
        for number in signals:
            promote.send_signal(number)
            time.sleep(pause)
        output, _ = promote.communicate(timeout=30)
    finally:
        reap(promote)
    return promote.returncode, output


def test_interrupt_during_a_health_check_restores_and_says_so(tmp_path):
    """SIGINT while the check's output goes to /dev/null: the trap still reports, and green goes."""
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    (tmp_path / "active").write_text("blue\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "LOCK_FILE": str(tmp_path / "lock"),
           "HEALTH_TIMEOUT": "60", "RELEASE_ENV": release_file(tmp_path)}
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
    assert "active-color=green" not in calls and "--color green" not in calls


def test_a_closed_terminal_sighup_restores_the_old_color(fake):
    state, env = fake
    status, output = interrupt_during_health_check(state, env, signal.SIGHUP)
    assert status == 129, output
    assert "blue serves, as before the promotion." in output
    assert not (state / "green").exists()
    assert (state / "active").read_text() == "blue\n"


def test_signals_during_the_restoration_do_not_cut_it_short(fake):
    """Ctrl-C, then Ctrl-C and a kill while the restoration removes green: it still finishes."""
    state, env = fake
    (state / "rm-delay").write_text("2")
    status, output = interrupt_during_health_check(state, env, signal.SIGINT, signal.SIGINT,
                                                   signal.SIGTERM, pause=0.5)
    assert status == 130, output
    assert "blue serves, as before the promotion." in output
    assert not (state / "green").exists()


def test_a_failed_undrain_keeps_the_new_color_serving(fake):
    """The drain fails and so does every undrain: blue may refuse clients, so green, switched to and
    past the gate, keeps serving instead of a switch back to a color that closes everyone."""
    state, env = fake
    (state / "healthy").touch()
    (state / "fail-wait-drained").touch()
    (state / "fail-undrain").touch()
    result = promote(env)
    assert result.returncode != 0
    assert "promotion failed at state 'draining'" in result.stderr
    assert "blue could not be undrained; green keeps serving" in result.stderr
    assert (state / "active").read_text() == "green\n"
    assert (state / "green").exists()
    assert calls(state).count(" undrain blue") == 3


def test_a_drain_failure_with_a_working_undrain_restores_the_old_color(fake):
    state, env = fake
    (state / "healthy").touch()
    (state / "fail-wait-drained").touch()
    result = promote(env)
    assert result.returncode != 0
    assert "blue serves, as before the promotion." in result.stderr
    assert (state / "active").read_text() == "blue\n"
    assert not (state / "green").exists()
    # The switch forward asked the edges for the usual 15 s; the switch back waits as long as the engine
    # may take (after an engine restart this node's Swarm DNS names the other nodes' Nginx only once the
    # overlay's gossip has caught up: the CI lab's restore gave up at 15 s with "0 Nginx answer in DNS").
    checks = [line for line in calls(state).splitlines() if "expect-color --color" in line]
    assert "--color green" in checks[0] and checks[0].endswith("--timeout 15")
    assert "--color blue" in checks[-1] and checks[-1].endswith("--timeout 120")


@pytest.mark.parametrize("name, value", [
    ("HEALTH_TIMEOUT", "abc"), ("DRAIN_SECONDS", "-1"), ("REMOVE_TIMEOUT", "0"), ("WATCH_SECONDS", "1e3"),
    ("WATCH_ERROR_RATIO", "five"), ("WATCH_GRACE", "1.2.3"), ("KEEP_OLD", "yes"),
])
def test_bad_numeric_settings_stop_before_anything_changes(fake, name, value):
    state, env = fake
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env={**env, name: value},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert name in result.stderr
    assert calls(state) == "", "promote.sh called docker before checking its settings"


def test_a_release_writes_its_report_with_every_step(fake):
    state, env = fake
    (state / "healthy").touch()
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [report] = (state / "reports").iterdir()
    assert report.name.startswith("release-") and report.name.endswith("-green.html")
    assert report.read_text() == "<html>report</html>\n"
    assert f"release report: {report}" in result.stderr
    args = (state / "report-args").read_text().split("\n")
    assert args[args.index("--outcome") + 1] == "released: green serves new" and "--ok" in args
    steps = args[args.index("--steps") + 1:args.index("--end")]
    names = [line.split(" ", 1)[1] for line in steps if line]
    assert names[-5:] == ["switch Nginx to green", "watch green for 0s", "drain blue over 1s", "remove blue",
                          "released wsapp:new on green"], names


def test_a_report_that_fails_does_not_change_the_outcome(fake):
    """A failed release stays failed and says so in its report; a report that cannot be written is a
    warning, leaves no half-written file, and a good release stays good."""
    state, env = fake
    (state / "fail-wait-drained").touch()
    (state / "healthy").touch()
    failed = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == 1 and "blue serves, as before the promotion." in failed.stderr
    args = (state / "report-args").read_text().split("\n")
    assert args[args.index("--outcome") + 1].startswith("failed (exit 1) at state 'draining'")
    assert "--ok" not in args and any(line.endswith(" restore blue") for line in args)
    (state / "fail-wait-drained").unlink()
    (state / "fail-report").touch()
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "the release report could not be written" in result.stderr
    assert len(list((state / "reports").iterdir())) == 1, "only the failed release's report"


def test_the_release_file_wins_over_the_shell(fake):
    state, env = fake
    (state / "healthy").touch()
    env = {**env, "ALLOWED_HOSTS": "evil.example", "REPLICAS": "9"}
    result = promote(env)
    assert result.returncode == 0, result.stderr
    assert (state / "deployed").read_text() == "ALLOWED_HOSTS=localhost,127.0.0.1 REPLICAS=2\n"
    assert "ALLOWED_HOSTS=evil.example in the environment is ignored" in result.stderr


def test_the_image_is_pushed_and_deployed_by_digest(fake):
    """An image built here goes to the registry and the color runs it by digest, with its tag as version."""
    state, env = fake
    (state / "healthy").touch()
    result = promote(env)
    assert result.returncode == 0, result.stderr
    assert "tag wsapp:new 127.0.0.1:5000/wsapp:new" in calls(state)
    assert (state / "pushed").read_text() == "127.0.0.1:5000/wsapp:new\n"
    assert (state / "images").read_text() == f"127.0.0.1:5000/wsapp@sha256:{'ab' * 32} new\n"


def test_a_client_without_the_registrys_login_logs_in_and_hands_it_to_every_deploy_and_job(fake):
    """The own registry's proxies add no password (docs/security.md, "The registry"): promote.sh logs this
    client in from the secret (a short-lived task read by docker exec) before anything changes, and the
    color's deploy and every job pass the login on to the nodes, which would otherwise get 401."""
    state, env = fake
    (state / "healthy").touch()
    (state / "logged-out").touch()
    result = promote(env)
    assert result.returncode == 0, result.stderr
    assert (state / "login").read_text() == "s3cret"
    lines = calls(state).splitlines()
    assert "login --username wsapp --password-stdin 127.0.0.1:5000" in lines
    (task,) = [line for line in lines if line.startswith("service create") and "registry-login" in line]
    assert "source=wsapp_registry_password" in task and "--with-registry-auth" not in task
    assert lines.index("login --username wsapp --password-stdin 127.0.0.1:5000") < min(
        index for index, line in enumerate(lines) if line.startswith(("push", "stack deploy")))
    deploys = [line for line in lines if line.startswith("stack deploy")]
    jobs = [line for line in lines if line.startswith("service create") and "registry-login" not in line]
    assert deploys and jobs
    assert all("--with-registry-auth" in line for line in deploys + jobs), deploys + jobs


def test_a_logged_in_client_is_not_logged_in_again(fake):
    state, env = fake
    (state / "healthy").touch()
    result = promote(env)
    assert result.returncode == 0, result.stderr
    lines = calls(state).splitlines()
    assert not any(line.startswith("login") or "registry-login" in line for line in lines), lines
    assert not (state / "login").exists()


def test_an_image_given_by_digest_is_deployed_as_it_is(fake):
    state, env = fake
    (state / "healthy").touch()
    image = f"registry.example.com/team/wsapp@sha256:{'cd' * 32}"
    env = {**env, "REGISTRY": "registry.example.com/team"}
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", image], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (state / "pushed").exists()
    assert (state / "images").read_text() == f"{image} sha256-cdcdcdcdcdcd\n"


@pytest.mark.parametrize("line, message", [
    ("SHELL_STUFF=$(rm -rf /)", "expected NAME=value"),
    ("UNKNOWN=1", "unknown setting UNKNOWN"),
    ("REPLICAS=two", "REPLICAS must be a whole number"),
    ("NGINX_WORKER_CONNECTIONS=50000", "does not fit"),
    ("PUBLIC_ORIGIN=localhost", "PUBLIC_ORIGIN must be"),
    ("PUBLIC_ORIGINS=http://localhost/,http://127.0.0.1", "PUBLIC_ORIGINS must be"),
    ("PUBLIC_ORIGIN=http://localhost:8080", "is not one of PUBLIC_ORIGINS"),
    ("REDIS_PASSWORD_SECRET=other;rm", "REDIS_PASSWORD_SECRET must be"),
    ("DATABASE_URL=postgres://wsapp:secret@postgres:5432/wsapp", "without a password"),
])
def test_a_bad_release_file_is_refused_before_anything_changes(fake, line, message):
    state, env = fake
    lines = (ROOT_RELEASE_ENV.read_text().splitlines())
    key = line.split("=")[0]
    lines = [entry for entry in lines if not entry.startswith(key + "=")] + [line]
    release = state / "release.env"
    release.write_text("\n".join(lines) + "\n")
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"],
                            env={**env, "RELEASE_ENV": str(release)}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert message in result.stderr
    assert calls(state) == ""


@pytest.mark.parametrize("command", [["scripts/up.sh"], ["scripts/down.sh"], ["promote.sh"],
                                     ["promote.sh", "rollback"]])
def test_up_down_promote_and_rollback_share_one_lock(fake, command):
    state, env = fake
    with open(state / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run([f"{ROOT}/{command[0]}", *command[1:]], env=env, capture_output=True,
                                text=True, timeout=30)
    assert result.returncode != 0
    assert "another up, down, promote or rollback holds" in result.stderr
    assert "stack" not in calls(state)


def test_a_promotion_on_another_manager_holds_the_swarm_lock(fake):
    """Two managers have two lock files: the Swarm config is what stops the second promotion."""
    state, env = fake
    (state / "swarm-lock").write_text("held\n")
    result = promote(env, timeout=30)
    assert result.returncode == 1
    assert "another command holds the swarm lock: promote.sh pid 1 on elsewhere" in result.stderr
    assert "stack deploy" not in calls(state)
    assert (state / "swarm-lock").exists(), "the other promotion's lock must stay"
    unlock = promote(env, "unlock", timeout=30)
    assert unlock.returncode == 0, unlock.stderr
    assert not (state / "swarm-lock").exists()


def test_a_stale_swarm_lock_is_taken_over_and_released(fake):
    state, env = fake
    (state / "swarm-lock").write_text("held\n")
    (state / "healthy").touch()
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], capture_output=True, text=True,
                            timeout=60, env={**env, "LOCK_SINCE": str(int(time.time()) - 7200),
                                             "LOCK_STALE_SECONDS": "1800"})
    assert "taking over the swarm lock left" in result.stderr
    assert result.returncode == 0, result.stderr
    assert "stack deploy" in calls(state)
    assert not (state / "swarm-lock").exists(), "released at exit"


def test_a_switch_records_the_color_then_switches_and_asks_every_edge(fake):
    """The label first (an Nginx that starts later serves it), then switch-color on every edge node
    (a global job with the node's Docker socket), then every Nginx is asked; no local Nginx needed."""
    state, env = fake
    (state / "healthy").touch()
    result = promote(env)
    assert result.returncode == 0, result.stderr
    lines = calls(state).splitlines()
    record = lines.index("service update --detach --label-add com.wsapp.active-color=green "
                         "--label-add com.wsapp.switch-from=blue wsapp_nginx")
    job = next(i for i, line in enumerate(lines)
               if "switch-local --service wsapp_nginx --color green" in line)
    check = next(i for i, line in enumerate(lines) if "expect-color --color green --nginx-service" in line)
    assert record < job < check
    assert "--mode global-job --constraint node.labels.wsapp.edge==true" in lines[job]
    assert "source=/var/run/docker.sock" in lines[job]
    assert (state / "active").read_text() == "green\n"


def test_a_failed_label_update_while_restoring_is_not_taken_for_a_switch_back(fake):
    """The restoration runs with set -e off: a label update back to blue that fails must fail the
    switch, not be followed by removing green (an Nginx that restarts would then serve a removed
    color, and the next promotion would find the recorded color not deployed)."""
    state, env = fake
    (state / "healthy").touch()
    (state / "fail-wait-drained").touch()
    (state / "fail-label-blue").touch()
    result = promote(env)
    assert result.returncode != 0
    assert ("switching Nginx back to blue failed; green may still serve on some edges and is kept"
            in result.stderr)
    # The advice names the command that switches to blue, not rollback (which would switch to green).
    assert "run: ./promote.sh repair (switches every Nginx to blue" in result.stderr
    assert "promote.sh rollback" not in result.stderr
    assert "blue serves, as before the promotion." not in result.stderr
    assert (state / "active").read_text() == "green\n"
    assert (state / "green").exists()


def test_a_lock_taken_over_as_stale_is_not_removed_by_its_first_holder(fake):
    """A promotion that runs past LOCK_STALE_SECONDS loses its lock to another command; at its exit it
    must not remove that command's lock (a third could then start alongside it)."""
    state, env = fake
    (state / "healthy").touch()
    (state / "takeover-at-deploy").touch()
    result = promote(env)
    assert result.returncode == 0, result.stderr
    assert (state / "swarm-lock").exists(), "the other command's lock was removed"
    assert (state / "swarm-lock-id").read_text() == "rival-id\n"


def test_two_commands_taking_over_one_stale_lock_do_not_both_hold_it(fake):
    """Both find the lock stale; the other removes it and creates its own first: this one's removal
    (of the stale lock, by its ID) must not remove the new lock, so this one stops."""
    state, env = fake
    (state / "swarm-lock").write_text("held\n")
    (state / "race-takeover").touch()
    (state / "healthy").touch()
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], capture_output=True, text=True,
                            timeout=60, env={**env, "LOCK_SINCE": str(int(time.time()) - 7200),
                                             "LOCK_STALE_SECONDS": "1800"})
    assert result.returncode == 1, result.stderr
    assert "could not take the swarm lock" in result.stderr
    assert "stack deploy" not in calls(state)
    assert (state / "swarm-lock-id").read_text() == "rival-id\n", "the other command's lock must stay"


def test_a_job_whose_logs_hang_still_ends(fake):
    """`docker service logs` can hang (a known engine bug): a job that completed must not wait for it
    forever, nor fail for it (it runs in the restoration too)."""
    state, env = fake
    (state / "hang-logs").touch()
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/lib.sh"; swarm_job 5 ctl "rooms.ctl probe" '
                             "--mode replicated-job wsapp:old python -m rooms.ctl probe"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "could not be read" in result.stderr


def test_the_lock_file_is_in_a_directory_only_its_owner_can_write(fake):
    """Not /tmp, where any local user could take the lock first or plant a symlink at its path."""
    state, env = fake
    env = {key: value for key, value in env.items() if key != "LOCK_FILE"}
    env["LOCK_DIR"] = str(state / "locks")
    result = subprocess.run([f"{ROOT}/scripts/down.sh"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (state / "locks" / "wsapp.lock").is_file()
    assert stat.S_IMODE((state / "locks").stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o720])
def test_a_lock_directory_others_can_write_is_refused(fake, mode):
    state, env = fake
    env = {key: value for key, value in env.items() if key != "LOCK_FILE"}
    (state / "locks").mkdir()
    (state / "locks").chmod(mode)
    env["LOCK_DIR"] = str(state / "locks")
    result = subprocess.run([f"{ROOT}/scripts/down.sh"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert f"{state / 'locks'} (for the lock file) must be a directory of yours that only you can write" in (
        result.stderr)
    assert not (state / "locks" / "wsapp.lock").exists() and "stack" not in calls(state)


def test_status_before_any_report_names_none_and_succeeds(fake):
    """REPORT_DIR not made yet (no release since the lab, or a host, came up): status still answers,
    exit 0 (find's failure on the missing directory once ended promote.sh status with 1 under pipefail)."""
    state, env = fake
    result = subprocess.run([f"{ROOT}/promote.sh", "status"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"last release report: none yet (in {state}/reports)" in result.stdout


DATABASE_URL = "postgres://wsapp@postgres:5432/wsapp"


@pytest.fixture
def with_database(fake):
    """The fake swarm with a database in the release file and a new color that gets healthy."""
    state, env = fake
    (state / "healthy").touch()
    release = release_file(state, DATABASE_URL=DATABASE_URL)
    return state, {**env, "RELEASE_ENV": release, "MIGRATE_TIMEOUT": "3"}


def job_creates(state, kind):
    return [line for line in calls(state).splitlines()
            if line.startswith("service create") and f"com.wsapp.job={kind}" in line]


def test_migrations_are_linted_then_applied_by_jobs_of_the_new_image_before_it_is_deployed(with_database):
    state, env = with_database
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = calls(state).splitlines()
    [lint] = job_creates(state, "lintmigrations")
    [migrate] = job_creates(state, "migrate")
    deploy = next(line for line in lines if line.startswith("stack deploy"))
    assert lines.index(lint) < lines.index(migrate) < lines.index(deploy)
    image = f"127.0.0.1:5000/wsapp@sha256:{'ab' * 32}"
    assert lint.endswith(f"{image} python manage.py checkmigrations --unapplied-migrations")
    assert migrate.endswith(f"{image} python manage.py migrate --noinput")
    for expected in ("--mode replicated-job", "--restart-condition none", "--network wsapp",
                     "source=wsapp_postgres_password,target=postgres_password",
                     "source=wsapp_ticket_keys,target=ticket_keys", f"DATABASE_URL={DATABASE_URL}",
                     "DATABASE_PASSWORD_FILE=/run/secrets/postgres_password",
                     "TICKET_KEYS_FILE=/run/secrets/ticket_keys", "DATABASE_STATEMENT_TIMEOUT=3",
                     "DATABASE_LOCK_TIMEOUT=5"):
        assert expected in migrate and expected in lint, expected
    assert sum(line.startswith("service rm wsapp-migrate-") for line in lines) == 1, "the job is removed"


@pytest.mark.parametrize("kind, why", [("lintmigrations", "fail"), ("migrate", "fail"), ("migrate", "hang")])
def test_a_refused_failed_or_endless_migration_deploys_nothing_and_blue_serves(with_database, kind, why):
    state, env = with_database
    (state / f"{why}-{kind}").touch()
    started = time.monotonic()
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 30
    assert "nothing changed and blue serves" in result.stderr if kind == "lintmigrations" else \
        "nothing was deployed and blue serves" in result.stderr
    if why == "hang":
        assert "did not finish within 3s" in result.stderr
    made = calls(state)
    assert "stack deploy" not in made and "stack rm" not in made and "active-color=" not in made
    assert (state / "active").read_text() == "blue\n" and not (state / "green").exists()
    assert not job_creates(state, "migrate") if kind == "lintmigrations" else job_creates(state, "migrate")
    assert f"service rm wsapp-{kind}-" in made, "the job is removed, a running one stopped"
    args = (state / "report-args").read_text().split("\n")
    assert args[args.index("--outcome") + 1].startswith("failed (exit 1) at state 'none'")


def test_without_a_database_no_migration_job_runs(fake):
    state, env = fake
    (state / "healthy").touch()
    env = {**env, "RELEASE_ENV": release_file(state, DATABASE_URL="")}
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no migrations to run" in result.stderr
    assert not job_creates(state, "lintmigrations") and not job_creates(state, "migrate")


@pytest.mark.parametrize("watch, drain", [("60", "60"), ("0", "110"), ("100", "10")])
def test_a_watch_and_drain_nginx_would_cut_are_refused(fake, watch, drain):
    """Nginx closes the old color's sockets worker_shutdown_timeout (120 s) after the switch's
    reload, without a 1012: a watch and drain that reach it (with 10 s for the jobs) are refused."""
    state, env = fake
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"],
                            env={**env, "WATCH_SECONDS": watch, "DRAIN_SECONDS": drain},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "worker_shutdown_timeout of 120s" in result.stderr, result.stderr
    assert "without a 1012" in result.stderr
    assert calls(state) == "", "promote.sh called docker before checking its settings"


def test_the_shutdown_timeout_is_read_from_the_nginx_config(fake, tmp_path):
    """One source: the timeout in nginx.conf, not a copy in promote.sh."""
    state, env = fake
    conf = tmp_path / "nginx.conf"
    conf.write_text((Path(ROOT) / "nginx" / "nginx.conf").read_text().replace(
        "worker_shutdown_timeout 120s;", "worker_shutdown_timeout 40s;"))
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"],
                            env={**env, "NGINX_CONF": str(conf), "WATCH_SECONDS": "20",
                                 "DRAIN_SECONDS": "10"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "worker_shutdown_timeout of 40s" in result.stderr, result.stderr
    conf.write_text("events {}\n")
    result = subprocess.run([f"{ROOT}/promote.sh", "--image", "wsapp:new"],
                            env={**env, "NGINX_CONF": str(conf)}, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "no 'worker_shutdown_timeout <seconds>s;'" in result.stderr


def test_the_default_watch_and_drain_fit_the_shutdown_timeout(fake):
    state, env = fake
    env = {key: value for key, value in env.items() if key not in ("WATCH_SECONDS", "DRAIN_SECONDS")}
    result = promote(env, "status", timeout=30)
    assert "worker_shutdown_timeout" not in result.stderr
    result = promote(env, "--help", timeout=30)
    assert result.returncode == 0 and "worker_shutdown_timeout" in result.stdout


def test_a_switch_never_confirmed_is_repaired_before_anything_is_removed(fake):
    """Killed between the record (green, from blue) and the gate: the next promotion switches every
    Nginx back to blue (the last confirmed color), drains green, and only then removes it."""
    state, env = fake
    (state / "healthy").touch()
    (state / "green").touch()
    (state / "active").write_text("green\n")
    (state / "switch-from").write_text("blue\n")
    result = promote(env)
    assert result.returncode == 0, result.stderr
    assert "the switch from blue to green was never confirmed" in result.stderr
    lines = calls(state).splitlines()
    back = lines.index("service update --detach --label-add com.wsapp.active-color=blue "
                       "--label-rm com.wsapp.switch-from wsapp_nginx")
    switched = next(i for i, line in enumerate(lines)
                    if "switch-local --service wsapp_nginx --color blue" in line)
    drained = next(i for i, line in enumerate(lines) if "rooms.ctl drain green" in line)
    removed = lines.index("stack rm wsapp-green")
    assert back < switched < drained < removed
    assert lines.index("stack deploy --detach=true --resolve-image never --with-registry-auth -c "
                       f"{ROOT}/stack/app.yml -c {ROOT}/stack/green.yml wsapp-green") > removed
    assert (state / "active").read_text() == "green\n" and not (state / "switch-from").exists()


def test_edges_on_a_down_node_are_skipped_and_listed(fake):
    """The switch job leaves the down node out, the check lets its Nginx be silent, status lists it."""
    state, env = fake
    (state / "healthy").touch()
    (state / "down-edge").touch()
    result = promote(env)
    assert result.returncode == 0, result.stderr
    assert "edges that are down are skipped" in result.stderr and "edge2 (n2): down, active" in result.stderr
    lines = calls(state).splitlines()
    job = next(line for line in lines if "switch-local --service wsapp_nginx --color green" in line)
    assert "--constraint node.id!=n2" in job
    check = next(line for line in lines if "expect-color --color green" in line)
    assert "--down 1" in check
    status = promote(env, "status", timeout=30)
    assert "edges that are down, skipped by switches" in status.stdout and "edge2 (n2)" in status.stdout
