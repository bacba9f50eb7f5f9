"""redis/start.sh's ACL for the app user (`wsapp`): every command the service runs is allowed, and
none of the commands that would let a compromised replica hurt everyone else."""

import re
from pathlib import Path

from tests.helpers import ROOT

START = Path(ROOT, "redis", "start.sh").read_text()
# Commands the service sends itself through redis-py (redishub.py, ctl.py) and channels_redis'.
CLIENT_COMMANDS = {
    "ping", "publish", "subscribe", "unsubscribe", "evalsha", "eval", "script|load", "xrange", "time",
    "zadd", "zcount", "zremrangebyscore", "expire", "bzpopmin", "zpopmin", "zrem",
    "zrange", "multi", "exec",
}
FORBIDDEN = {"flushall", "flushdb", "config", "replicaof", "slaveof", "shutdown", "acl", "debug", "module",
             "keys", "monitor", "save", "bgsave", "bgrewriteaof", "failover", "migrate", "script|kill",
             "script|flush", "client|kill", "client|pause", "function", "sync", "psync", "swapdb"}


def command_list(name):
    match = re.search(rf'^readonly {name}="([^"]*)"', START, re.M)
    assert match, f"redis/start.sh has no {name}"
    return set(match.group(1).split())


def lua_commands():
    found = set()
    for path in Path(ROOT, "service").rglob("*.py"):
        found |= {name.lower() for name in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", path.read_text())}
    return found


def test_every_command_in_the_services_lua_scripts_is_allowed():
    lua = lua_commands()
    assert {"xadd", "publish", "incr"} <= lua, "the scan of service/ found too few scripts"
    assert lua - command_list("APP_COMMANDS") == set()


def test_every_command_the_clients_send_is_allowed():
    assert CLIENT_COMMANDS - command_list("APP_COMMANDS") == set()


def test_the_app_user_may_not_administer_redis():
    allowed = command_list("APP_COMMANDS")
    assert allowed & FORBIDDEN == set()
    assert not any(name.startswith(("config", "acl", "debug")) for name in allowed)


def test_the_app_user_is_confined_to_its_keys_and_channels():
    lines = START.splitlines()
    line = next(line for line in lines
                if line.strip().startswith("acl_user wsapp ") and "~" in line)
    assert "~wsapp*" in line and "&wsapp:*" in line and "resetkeys" in line and "resetchannels" in line
    assert "+@all" not in line
    assert "printf 'user default reset off ~* &* +@all\\n'" in START
