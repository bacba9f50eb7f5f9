"""Reconnect storm shape: hold --users, then every STORM_PERIOD seconds drop them all and bring
them all back within one second, until --run-time."""

import os

from locust import LoadTestShape

STORM_PERIOD = float(os.environ.get("STORM_PERIOD", "30"))
STORM_DOWN_SECONDS = float(os.environ.get("STORM_DOWN_SECONDS", "3"))


class ReconnectStormShape(LoadTestShape):
    """Every user closes and reconnects at once, as after a drain: a burst of handshakes and joins.

    The first ramp uses --spawn-rate; each storm respawns every user at once (spawn rate = users).
    """

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        elapsed = self.get_run_time()
        if options.run_time and elapsed >= options.run_time:
            return None
        if elapsed < STORM_PERIOD:
            return options.num_users, options.spawn_rate
        if elapsed % STORM_PERIOD >= STORM_PERIOD - STORM_DOWN_SECONDS:
            return 0, options.num_users
        return options.num_users, options.num_users
