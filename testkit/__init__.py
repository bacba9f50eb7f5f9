"""Process, Redis, Postgres, port and wait helpers shared by the test tiers (tests/) and the benchmark
(bench/).

Standard library only, no pytest: bench runs from .venv-bench, which has neither the service's
dependencies nor pytest. A prerequisite that is missing raises MissingCommand; the test tiers
turn that into a failure (tests/helpers.require_command), never a skip.
"""

from testkit.processes import (
    ROOT,
    AppServer,
    MissingCommand,
    PostgresServer,
    Process,
    RedisNode,
    RedisServer,
    free_port,
    port_answers,
    wait_until,
)

__all__ = [
    "ROOT",
    "AppServer",
    "MissingCommand",
    "PostgresServer",
    "Process",
    "RedisNode",
    "RedisServer",
    "free_port",
    "port_answers",
    "wait_until",
]
