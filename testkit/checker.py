"""One check of a room's delivery guarantee over every client's log (issue 16, docs/protocol.md).

The guarantee is checked once, over the history of all clients together (Jepsen/Elle's habit), not
by a test per case. Standard library only: tests, the fault tier and the load test can all use it.

Client log format
-----------------
`logs` maps a client's name to its list of events, in the order the client saw them. Each event is
a dict with `"event"` naming it; frames are the parsed JSON objects the server sent:

    {"event": "connect", "query": "?since=41&epoch=Ab3&sender=..."}   a handshake attempt
    {"event": "welcome", "frame": {...}}      the connection's welcome (session, room, seq, epoch)
    {"event": "resync", "frame": {...}}       a resync frame
    {"event": "message", "frame": {...}}      a room message the client DELIVERED to its app
    {"event": "dropped", "frame": {...}, "reason": R}
                                              a room message received and not delivered: R is
                                              "seen" (its (session, id) was delivered already: a
                                              replay), or "gap", "epoch", "behind" (not the next one
                                              of the client's epoch: the client resumes instead)
    {"event": "duplicate", "frame": {...}}    a duplicate frame (an acknowledgement)
    {"event": "error", "frame": {...}}        an error frame (with "id": that attempt not published)
    {"event": "reconnect", "frame": {...}}    a reconnect notice (informational)
    {"event": "sent", "id": "...", "body": "..."}   a message frame sent (again, on a resend)
    {"event": "close", "code": 1012}          the connection ended (None: it never opened)

Any other field (a timestamp "t", "resend": true) is informational. `history` maps a room to the
frames (dicts or JSON text) its Redis history held after the run (field `f` of each entry of
`wsapp:history:<room>`). A frame without "epoch" (a server that has none) is in epoch "".

What is checked (check() returns one human-readable string per violation; [] means all held)
--------------------------------------------------------------------------------------------
A copy of a message is its (session, id) pair: what a client drops a replay by. A message is
(room, sender client, id), the client owning the session by its welcomes (a client sends only once
it has its welcome, so its log names each of its sessions): after a failover that lost a copy, the
sender's resend is a second copy of the same message. Its placements are the
(epoch, seq) it was seen at, by any client or in the history, and those a `duplicate` names.

1. Acknowledged messages reach every member exactly once, in order, or a resync covers them.
   A client's message is acknowledged when the client received its echo (a room message with its
   id and one of its sessions, delivered or dropped) or a `duplicate` for it. A member owes the
   copies placed in its window of an epoch: from its first welcome's seq + 1 (a late joiner owes
   nothing before), or a resync's `from`, up to the last seq it received or was told the room had
   (a welcome's or resync's seq) in that epoch. A resync (too_old, ahead, epoch) ends the window at
   the seq the client had and opens another at `from`: what lies between is covered. A connect
   without `since` starts a new chain: the old window ends at the last seq received (a member that
   left owes nothing after). Within one epoch on one chain the received seqs (delivered or dropped
   as seen) go up by exactly one, a resume's `since`/`epoch` are what the client had, a
   welcome in another epoch is followed by a resync, and no copy is delivered twice.
2. No message is published twice: in one epoch it has one seq.
3. No seq means two different messages: in one epoch, each seq is one (session, id, body).
4. No attempt reported as not published is published: an `error` with an id, on the connection of
   session S, means no room message anywhere (any client, the history) has that (S, id).
"""

import json
from collections import Counter, defaultdict
from urllib.parse import parse_qs

EVENTS = frozenset(
    {"connect", "welcome", "resync", "message", "dropped", "duplicate", "error", "reconnect", "sent", "close"}
)
DROP_REASONS = frozenset({"seen", "gap", "epoch", "behind"})
RECEIVED = ("message", "dropped")  # events that carry a room message frame
FRAMES = frozenset({"welcome", "resync", "message", "dropped", "duplicate", "error", "reconnect"})


def epoch_of(frame, default=""):
    epoch = frame.get("epoch")
    return default if epoch is None else str(epoch)


def parse_query(query):
    """(since, epoch) of a handshake query string; each None when absent."""
    values = parse_qs((query or "").lstrip("?"), keep_blank_values=True)
    since = values.get("since", [None])[0]
    epoch = values.get("epoch", [None])[0]
    return (int(since) if since is not None and since.isdigit() else None), epoch


def by_position(item):
    """Sort key of ((room, epoch, seq), ...) items: seqs in numeric order."""
    (room, epoch, seq), _ = item
    return str(room), str(epoch), seq


class Window:
    """The (epoch, seq) positions one member owes: per epoch, closed intervals [low, high]."""

    def __init__(self):
        self.intervals = defaultdict(list)
        self.current = None  # [epoch, low, high], the interval still growing

    def open(self, epoch, low, high):
        self.current = [epoch, low, high]
        self.intervals[epoch].append(self.current)

    def extend(self, epoch, seq):
        if self.current is not None and self.current[0] == epoch:
            self.current[2] = max(self.current[2], seq)

    def end_at(self, seq):
        if self.current is not None:
            self.current[2] = seq

    def owes(self, epoch, seq):
        return any(low <= seq <= high for _, low, high in self.intervals.get(epoch, ()))


class Member:
    """One client's log as the checker reads it."""

    def __init__(self, name, events):
        self.name, self.events = name, events
        self.room = None
        self.sessions = set()
        self.sent = set()
        self.window = Window()
        self.delivered = Counter()  # (session, id) -> times delivered to the app
        self.acked = set()  # ids of its own messages it saw acknowledged
        self.messages = set()  # (sender, id) of every message delivered, whatever the copy


class Checker:
    def __init__(self, logs, history):
        self.violations = []
        self.members = [Member(name, events) for name, events in logs.items()]
        self.history = {room: [json.loads(f) if isinstance(f, str) else f for f in frames]
                        for room, frames in (history or {}).items()}
        self.owner = {}  # session -> client name

    def report(self, text):
        self.violations.append(text)

    def run(self):
        self.read_membership()
        self.collect_placements()
        self.check_seqs_are_one_message()
        self.check_published_once()
        self.check_refused_not_published()
        for member in self.members:
            if member.room is not None:
                self.walk(member)
        self.check_acknowledged_delivered()
        return self.violations

    # -- who is who ------------------------------------------------------------------------------

    def read_membership(self):
        for member in self.members:
            for n, event in enumerate(member.events):
                kind = event.get("event")
                if kind not in EVENTS:
                    self.report(f"{member.name}: event {n} is of unknown kind {kind!r}")
                elif kind == "dropped" and event.get("reason") not in DROP_REASONS:
                    self.report(f"{member.name}: event {n} dropped a message for unknown reason "
                                f"{event.get('reason')!r}")
                elif kind == "welcome":
                    frame = event["frame"]
                    if member.room is None:
                        member.room = frame["room"]
                    elif frame["room"] != member.room:
                        self.report(f"{member.name}: welcomed to room {frame['room']!r} after {member.room!r}"
                                    " (one room per client log)")
                    member.sessions.add(frame["session"])
                    self.owner.setdefault(frame["session"], member.name)
                elif kind == "sent":
                    member.sent.add(event["id"])

    def who(self, session):
        return self.owner.get(session, f"session {session}")

    def message_of(self, room, frame):
        """(room, sender, id): one message, whatever copy of it."""
        return (room, self.who(frame.get("session")), frame.get("id"))

    # -- placements --------------------------------------------------------------------------------

    def sources(self):
        """(source name, room, frame) of every room message frame any client received, then the history."""
        for member in self.members:
            for event in member.events:
                if event.get("event") in RECEIVED:
                    frame = event["frame"]
                    yield member.name, frame.get("room", member.room), frame
        for room, frames in self.history.items():
            for frame in frames:
                yield "the history", frame.get("room", room), frame

    def collect_placements(self):
        # (room, epoch, seq) -> (session, id, body) -> the sources that saw it there
        self.at = defaultdict(lambda: defaultdict(set))
        self.seqs = defaultdict(lambda: defaultdict(dict))  # message -> epoch -> seq -> how it was seen
        self.copies = defaultdict(lambda: defaultdict(set))  # message -> (session, id) or None -> placements
        self.published = set()  # (room, session, id) of every copy seen published
        for source, room, frame in self.sources():
            epoch, seq = epoch_of(frame), frame["seq"]
            copy = (frame.get("session"), frame.get("id"))
            self.at[(room, epoch, seq)][(*copy, frame.get("body"))].add(source)
            self.published.add((room, *copy))
            if copy[1] is not None:
                message = self.message_of(room, frame)
                self.seqs[message][epoch].setdefault(seq, f"a message frame ({source})")
                self.copies[message][copy].add((epoch, seq))
        for member in self.members:
            for event in member.events:
                if event.get("event") == "duplicate" and member.room is not None:
                    frame = event["frame"]
                    message = (member.room, member.name, frame.get("id"))
                    if frame.get("seq") is None or frame.get("id") is None:
                        continue
                    epoch, seq = epoch_of(frame), frame["seq"]
                    self.seqs[message][epoch].setdefault(seq, f"a duplicate frame to {member.name}")
                    # The copy seen at that seq, if any client saw it; else any copy will do.
                    seen = self.at.get((member.room, epoch, seq), ())
                    there = [(session, msg_id) for session, msg_id, _ in seen if msg_id == frame["id"]]
                    self.copies[message][there[0] if len(there) == 1 else None].add((epoch, seq))

    def check_seqs_are_one_message(self):
        """Rule 3."""
        for (room, epoch, seq), messages in sorted(self.at.items(), key=by_position):
            if len(messages) > 1:
                seen = "; ".join(
                    f"{self.who(session)}'s {msg_id!r} (session {session}, body {body!r}) seen by "
                    f"{', '.join(sorted(sources))}"
                    for (session, msg_id, body), sources in sorted(messages.items(), key=str)
                )
                self.report(f"room {room!r} epoch {epoch!r} seq {seq} is {len(messages)} different "
                            f"messages: {seen}")

    def check_published_once(self):
        """Rule 2."""
        for (room, sender, msg_id), epochs in sorted(self.seqs.items(), key=str):
            for epoch, seqs in sorted(epochs.items()):
                if len(seqs) > 1:
                    where = ", ".join(f"{seq} ({how})" for seq, how in sorted(seqs.items()))
                    self.report(f"{sender}'s message {msg_id!r} was published {len(seqs)} times in epoch "
                                f"{epoch!r} of room {room!r}: seqs {where}")

    def check_refused_not_published(self):
        """Rule 4."""
        for member in self.members:
            session = None
            for event in member.events:
                kind = event.get("event")
                if kind == "welcome":
                    session = event["frame"]["session"]
                elif kind == "connect":
                    session = None
                elif kind == "error" and event["frame"].get("id") is not None and session is not None:
                    frame = event["frame"]
                    if (member.room, session, frame["id"]) in self.published:
                        self.report(f"{member.name}: message {frame['id']!r} (session {session}) was "
                                    f"refused ({frame.get('error')}: not published) but was published")

    # -- each member -------------------------------------------------------------------------------

    def walk(self, member):
        """Rule 1's per-member part: order, resumes, windows, what was delivered."""
        name, window = member.name, member.window
        epoch = last = None  # where the client is: the last seq it received, in epoch
        since = resumed_epoch = None  # the current connection's query
        resync_for = None  # a welcome's epoch that must be followed by a resync
        for event in member.events:
            kind = event["event"]
            if resync_for is not None and kind in FRAMES and kind != "resync":  # the next frame
                self.report(f"{name}: welcomed in epoch {resync_for!r} while in {epoch!r}, without a resync")
                resync_for = None
            elif kind in ("connect", "close"):
                resync_for = None  # the connection ended before its resync came
            if kind == "connect":
                since, resumed_epoch = parse_query(event.get("query"))
                if since is None:
                    window.end_at(last if last is not None else -1)  # a new chain: it left
                elif last is not None and (since != last or resumed_epoch not in (None, epoch)):
                    self.report(f"{name}: resumed from since={since} epoch={resumed_epoch!r} but had "
                                f"received up to seq {last} of epoch {epoch!r}")
                    last = since
            elif kind == "welcome":
                frame = event["frame"]
                welcome_epoch, seq = epoch_of(frame), frame["seq"]
                if since is None or last is None:
                    epoch = welcome_epoch if since is None or resumed_epoch is None else resumed_epoch
                    last = seq if since is None else since
                    window.open(epoch, last + 1, max(last, seq) if epoch == welcome_epoch else last)
                    if epoch != welcome_epoch:
                        resync_for = welcome_epoch
                elif welcome_epoch != epoch:
                    resync_for = welcome_epoch
                else:
                    window.extend(epoch, seq)
            elif kind == "resync":
                frame = event["frame"]
                resync_for = None
                window.end_at(last if last is not None else -1)
                epoch = epoch_of(frame, epoch)
                last = frame["from"] - 1
                window.open(epoch, frame["from"], max(last, frame["seq"]))
            elif kind == "message" or (kind == "dropped" and event.get("reason") == "seen"):
                frame = event["frame"]
                frame_epoch, seq = epoch_of(frame), frame["seq"]
                if frame_epoch != epoch:
                    self.report(f"{name}: took seq {seq} of epoch {frame_epoch!r} while in epoch {epoch!r}, "
                                "without a resync")
                    epoch = frame_epoch
                    window.open(epoch, seq, seq)
                elif seq != last + 1:
                    what = "a gap" if seq > last + 1 else "out of order or repeated"
                    self.report(f"{name}: seq {seq} after {last} in epoch {epoch!r} ({what})")
                last = seq
                window.extend(epoch, seq)
                if kind == "message":
                    member.delivered[(frame.get("session"), frame.get("id"))] += 1
            if kind in RECEIVED:
                frame = event["frame"]
                if frame.get("session") in member.sessions and frame.get("id") in member.sent:
                    member.acked.add(frame["id"])
            elif kind == "duplicate" and event["frame"].get("id") in member.sent:
                member.acked.add(event["frame"]["id"])
        member.messages = {(self.who(session), msg_id) for session, msg_id in member.delivered}
        for (session, msg_id), times in sorted(member.delivered.items(), key=str):
            if times > 1 and msg_id is not None:
                self.report(f"{name}: delivered {self.who(session)}'s message {msg_id!r} (session {session}) "
                            f"{times} times")

    def check_acknowledged_delivered(self):
        """Rule 1: every copy of an acknowledged message placed in a member's window was delivered."""
        by_room = defaultdict(list)
        for member in self.members:
            if member.room is not None:
                by_room[member.room].append(member)
        for room, members in sorted(by_room.items()):
            for sender in members:
                for msg_id in sorted(sender.acked):
                    copies = self.copies.get((room, sender.name, msg_id), {})
                    for member in members:
                        self.owed_copies(member, sender.name, msg_id, copies)

    def owed_copies(self, member, sender, msg_id, copies):
        for copy, placements in sorted(copies.items(), key=str):
            owed = sorted(p for p in placements if member.window.owes(*p))
            if not owed:
                continue
            got = member.delivered[copy] > 0 if copy is not None else (sender, msg_id) in member.messages
            if not got:
                epoch, seq = owed[0]
                session = f"session {copy[0]}" if copy is not None else "as a duplicate said"
                self.report(f"{member.name}: never got {sender}'s acknowledged message {msg_id!r} "
                            f"({session}, epoch {epoch!r} seq {seq}), though it was a member then and no "
                            "resync covers it")


def check(logs, history=None):
    """The violations of the room guarantee in these client logs (and history dumps); [] if none."""
    return Checker(logs, history).run()
