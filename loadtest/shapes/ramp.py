"""Ramp shape: --users in RAMP_STEPS equal steps of RAMP_STEP_SECONDS each, then hold until --run-time."""

import math
import os

from locust import LoadTestShape

RAMP_STEPS = int(os.environ.get("RAMP_STEPS", "5"))
RAMP_STEP_SECONDS = float(os.environ.get("RAMP_STEP_SECONDS", "20"))


class RampShape(LoadTestShape):
    """Finds the knee: compare each step's latency in the CSV history (--csv-full-history)."""

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        elapsed = self.get_run_time()
        if options.run_time and elapsed >= options.run_time:
            return None
        step = min(RAMP_STEPS, int(elapsed // RAMP_STEP_SECONDS) + 1)
        return math.ceil(options.num_users * step / RAMP_STEPS), options.spawn_rate
