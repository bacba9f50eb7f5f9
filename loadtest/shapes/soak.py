"""Steady soak shape: ramp to --users at --spawn-rate, hold until --run-time, then stop.

With SOAK_STOP_FILE set, it also stops as soon as that file exists: `make soak-promote` ends the
soak that way once the promotions are done, so that Locust shuts down normally (its quitting hooks
write the delivery totals); a SIGTERM ends it without them.
"""

import os

from locust import LoadTestShape

STOP_FILE = os.environ.get("SOAK_STOP_FILE", "")


class SoakShape(LoadTestShape):
    """A constant population for a bounded time: the shape for `make soak` and `make soak-promote`."""

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        if options.run_time and self.get_run_time() >= options.run_time:
            return None
        if STOP_FILE and os.path.exists(STOP_FILE):
            return None
        return options.num_users, options.spawn_rate
