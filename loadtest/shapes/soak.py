"""Steady soak shape: ramp to --users at --spawn-rate, hold until --run-time, then stop."""

from locust import LoadTestShape


class SoakShape(LoadTestShape):
    """A constant population for a bounded time: the shape for `make soak` and `make soak-promote`."""

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        if options.run_time and self.get_run_time() >= options.run_time:
            return None
        return options.num_users, options.spawn_rate
