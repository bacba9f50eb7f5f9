"""Garbage-collector settings for a process that holds many long-lived connections."""

import gc

from django.conf import settings


def tune_gc():
    """Leave what exists at startup (Django, modules) out of every collection; collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(settings.GC_GEN0_THRESHOLD, 20, 100)
