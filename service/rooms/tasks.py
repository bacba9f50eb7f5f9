"""Background tasks that nobody awaits."""

import asyncio

_background = set()


def spawn(coro):
    """Run coro as a task that is kept referenced until done (the loop holds only weak refs)."""
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task
