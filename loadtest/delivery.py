"""Did every message of a room reach a client exactly once and in order? (docs/protocol.md)

A client resuming with `?since=` must see seq go up by exactly one from its first `welcome` to the
end, across every reconnect. One Receipt per client checks that, and adds what it found to totals
shared by all clients (a Counter):

- received: room `message` frames;
- lost: seqs never received: a step of more than one (what it skipped), and the seqs a `resync`
  `too_old` says are no longer kept. A skipped seq that comes later after all is moved from lost
  to out_of_order;
- duplicated: a seq at or below the last one that was not missing (received before);
- resync_too_old, resync_ahead, resync_epoch: resync frames (ahead: the room's counter went back;
  epoch: the room's history is a new one, after a Redis failover, restart or expiry; either way the
  client starts again from its `from`);
- redelivered: messages the replay after a resync `epoch` held that the client already had (the
  same id): dropped, as wsapp.js drops them, and not duplicates;
- resumes, replayed, max_replay: reconnects with `since` and how many kept messages the server
  replayed to them (welcome.seq - since, or welcome.seq - from + 1 after a resync).

Used by loadtest/locustfile.py and tests/e2e/load.py; it imports nothing of either.
"""

from collections import Counter

COUNTS = ("received", "lost", "duplicated", "out_of_order", "resync_too_old", "resync_ahead", "resync_epoch",
          "redelivered", "resumes", "replayed", "max_replay")
KEPT_IDS = 10000  # ids of the newest messages received, to drop what an epoch's replay repeats


def new_totals():
    return Counter({name: 0 for name in COUNTS})


class Receipt:
    def __init__(self, totals):
        self.totals = totals
        self.last = None  # last seq received (or the first welcome's seq)
        self.since = None
        self.missing = set()
        self.pending_replay = None
        self.epoch = None  # the epoch of last
        self.ids = {}  # id -> None, oldest first: the newest KEPT_IDS messages' ids
        self.replay_upto = 0  # after a resync epoch: its replay, up to this seq, may repeat known ids

    def query(self):
        """The query string for the next connection: resume from the last seq seen, in its epoch."""
        self.since = self.last
        if self.last is None:
            return ""
        return f"?since={self.last}" + ("" if self.epoch is None else f"&epoch={self.epoch}")

    def welcome(self, frame):
        self.commit_replay()
        seq = frame["seq"]
        if self.since is None:
            if self.last is None:
                self.last = seq
                self.epoch = frame.get("epoch")
            return
        self.totals["resumes"] += 1
        self.pending_replay = max(0, seq - self.since)

    def commit_replay(self):
        """Count the replay announced by welcome (or resync), once its connection delivers."""
        if self.pending_replay is not None:
            self.totals["replayed"] += self.pending_replay
            self.totals["max_replay"] = max(self.totals["max_replay"], self.pending_replay)
            self.pending_replay = None

    def resync(self, frame):
        """Follow a resync; returns its reason."""
        reason, start = frame["reason"], frame["from"]
        self.totals[f"resync_{reason}"] += 1
        if reason == "too_old" and start - 1 > self.last:
            self.totals["lost"] += start - 1 - self.last
        self.pending_replay = frame["seq"] - start + 1
        self.last = start - 1
        self.epoch = frame.get("epoch", self.epoch)
        if reason == "epoch":
            self.replay_upto = frame["seq"]
        self.missing = {seq for seq in self.missing if seq <= self.last}
        return reason

    def message(self, seq, msg_id=None):
        """Record a message's seq (and id); returns None if it was the next one, else what went wrong."""
        self.totals["received"] += 1
        self.commit_replay()
        if msg_id is not None:
            if seq <= self.replay_upto and msg_id in self.ids:
                self.totals["redelivered"] += 1
                self.last = max(self.last, seq)
                return None
            self.ids[msg_id] = None
            if len(self.ids) > KEPT_IDS:
                del self.ids[next(iter(self.ids))]
        last = self.last
        if last is None or seq == last + 1:
            self.last = seq
            return None
        if seq > last + 1:
            self.totals["lost"] += seq - last - 1
            self.missing.update(range(last + 1, seq))
            self.last = seq
            return "lost"
        if seq in self.missing:
            self.missing.discard(seq)
            self.totals["lost"] -= 1
            self.totals["out_of_order"] += 1
            return "out_of_order"
        self.totals["duplicated"] += 1
        return "duplicated"
