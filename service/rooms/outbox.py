"""Frames waiting for one client: sent in order by one writer task, bounded in frames and in bytes.

Frames are JSON text, ASCII (json.dumps escapes the rest), so len() is their size in bytes. Most
connections never need a queue: an idle connection whose socket takes the frame at once is written
to directly (the server's send_nowait, see wsserver), with no task.
"""

import asyncio
from collections import deque

from . import metrics
from .names import Error


class Outbox:
    def __init__(self, send, send_nowait, max_frames, max_bytes):
        self.send = send  # async send(frame) to the client
        self.send_nowait = send_nowait  # or None
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames = ()  # a deque once something has to wait
        self.bytes = 0
        self.writer = None
        self.open = False  # frames wait until start(): the handshake sends its own first

    def put(self, frame):
        """Queue a frame; False (and nothing kept) if the client is too far behind."""
        if self.open and self.writer is None and not self.frames and self.send_nowait:
            if self.send_nowait(frame):  # idle and writable: written already, no task needed
                return True
        if self.frames and (len(self.frames) >= self.max_frames or self.bytes + len(frame) > self.max_bytes):
            self.clear()
            return False
        if not self.frames:
            self.frames = deque()
        self.frames.append(frame)
        self.bytes += len(frame)
        self.kick()
        return True

    def start(self):
        self.open = True
        self.kick()

    def kick(self):
        if self.open and self.writer is None and self.frames:
            self.writer = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self):
        try:
            while self.frames:
                frame = self.frames.popleft()
                self.bytes -= len(frame)
                await self.send(frame)
        except Exception:
            metrics.ERRORS.labels(Error.SEND).inc()
        finally:
            self.clear()
            self.writer = None

    def clear(self):
        self.frames = ()
        self.bytes = 0

    def cancel(self):
        if self.writer is not None:
            self.writer.cancel()

    async def drain(self, timeout):
        """Wait up to timeout for what is queued to be sent; drop the rest."""
        if self.writer is not None:
            await asyncio.wait([self.writer], timeout=timeout)
        if self.writer is not None:
            self.writer.cancel()
            self.clear()
