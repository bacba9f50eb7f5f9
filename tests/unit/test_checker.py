"""The room guarantee's checker (testkit/checker.py): each rule on hand-written logs, then logs of a
simulated room (a server that keeps the contract, clients that follow it) that it must accept, and
mutations of them that it must reject."""

import copy
from collections import deque

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from testkit.checker import check

ROOM = "r"


def frame(kind, **fields):
    return {"type": kind, "room": ROOM, **fields}


def connect(since=None, epoch=None):
    query = "" if since is None else f"?since={since}" + ("" if epoch is None else f"&epoch={epoch}")
    return {"event": "connect", "query": query}


def welcome(session, seq, epoch="A"):
    return {"event": "welcome", "frame": frame("welcome", session=session, seq=seq, epoch=epoch)}


def msg(seq, session, msg_id, epoch="A", body=None, event="message", reason=None):
    body = f"body of {msg_id}" if body is None else body
    message = frame("message", epoch=epoch, seq=seq, body=body, session=session, id=msg_id)
    out = {"event": event, "frame": message}
    if reason is not None:
        out["reason"] = reason
    return out


def seen(seq, session, msg_id, epoch="A"):
    return msg(seq, session, msg_id, epoch, event="dropped", reason="seen")


def sent(msg_id):
    return {"event": "sent", "id": msg_id, "body": f"body of {msg_id}"}


def resync(since, start, seq, reason, epoch="A"):
    return {"event": "resync", "frame": frame("resync", since=since, epoch=epoch, reason=reason, seq=seq,
                                              **{"from": start})}


def close(code=1000):
    return {"event": "close", "code": code}


def duplicate(msg_id, seq, epoch="A"):
    return {"event": "duplicate", "frame": {"type": "duplicate", "id": msg_id, "seq": seq, "epoch": epoch}}


def error(msg_id, code="unavailable"):
    return {"event": "error", "frame": {"type": "error", "error": code, "detail": "...", "id": msg_id}}


def two_members():
    """alice sends a1, a2; both get both."""
    alice = [connect(), welcome("sa", 0), sent("a1"), sent("a2"), msg(1, "sa", "a1"), msg(2, "sa", "a2")]
    bob = [connect(), welcome("sb", 0), msg(1, "sa", "a1"), msg(2, "sa", "a2")]
    return {"alice": alice, "bob": bob}


def test_every_member_getting_every_message_once_in_order_passes():
    assert check(two_members()) == []


def test_a_member_missing_an_acknowledged_message_is_reported():
    logs = two_members()
    logs["bob"] = [connect(), welcome("sb", 0), msg(1, "sa", "a1")]
    logs["bob"] += [close(1006), connect(2, "A"), welcome("sb2", 2)]  # resumed, told seq 2, never got it
    violations = check(logs)
    assert len(violations) == 2, violations
    assert "resumed from since=2" in violations[0]
    assert "never got alice's acknowledged message 'a2'" in violations[1]


def test_a_gap_on_one_connection_is_reported_even_for_unacknowledged_messages():
    logs = two_members()
    logs["alice"] = [connect(), welcome("sa", 0), sent("a1"), sent("a2"), msg(2, "sa", "a2")]
    logs["bob"] = [connect(), welcome("sb", 0), msg(2, "sa", "a2")]
    violations = check(logs)
    assert violations == [f"{name}: seq 2 after 0 in epoch 'A' (a gap)" for name in ("alice", "bob")]


def test_a_message_delivered_twice_is_reported():
    logs = two_members()
    logs["bob"] += [close(1006), connect(2, "A"), welcome("sb2", 2), msg(2, "sa", "a2")]
    violations = check(logs)
    assert "bob: seq 2 after 2 in epoch 'A' (out of order or repeated)" in violations
    assert "bob: delivered alice's message 'a2' (session sa) 2 times" in violations


def test_a_replay_dropped_as_seen_after_an_epoch_resync_is_not_a_duplicate():
    """Redis failed over: the new epoch B replays everything kept, the client drops what it has."""
    logs = two_members()
    logs["bob"] = [connect(), welcome("sb", 0), msg(1, "sa", "a1"), close(1012), connect(1, "A"),
                   welcome("sb2", 2, "B"), resync(1, 1, 2, "epoch", "B"), seen(1, "sa", "a1", "B"),
                   msg(2, "sa", "a2", "B")]
    assert check(logs) == []


def test_swapped_messages_are_reported():
    logs = two_members()
    logs["bob"] = [connect(), welcome("sb", 0), msg(2, "sa", "a2"), msg(1, "sa", "a1")]
    violations = check(logs)
    assert violations[:2] == ["bob: seq 2 after 0 in epoch 'A' (a gap)",
                              "bob: seq 1 after 2 in epoch 'A' (out of order or repeated)"]


def test_a_late_joiner_owes_nothing_before_its_welcome():
    logs = two_members()
    logs["carol"] = [connect(), welcome("sc", 1), msg(2, "sa", "a2")]
    assert check(logs) == []


def test_a_member_that_left_owes_nothing_after_its_last_connection():
    logs = two_members()
    logs["bob"] = [connect(), welcome("sb", 0), msg(1, "sa", "a1"), close(1000)]
    assert check(logs) == []


def test_a_member_that_left_and_joined_again_owes_nothing_in_between():
    logs = two_members()
    logs["alice"] += [sent("a3"), msg(3, "sa", "a3")]
    logs["bob"] = [connect(), welcome("sb", 0), msg(1, "sa", "a1"), close(1000), connect(), welcome("sb2", 2),
                   msg(3, "sa", "a3")]
    assert check(logs) == []


def test_a_too_old_resync_covers_the_messages_it_skips():
    logs = two_members()
    logs["alice"] += [sent("a3"), msg(3, "sa", "a3")]
    logs["bob"] = [connect(), welcome("sb", 0), close(1006), connect(0, "A"), welcome("sb2", 3),
                   resync(0, 3, 3, "too_old"), msg(3, "sa", "a3")]
    assert check(logs) == []


def test_an_epoch_resync_covers_what_the_old_epoch_lost():
    """a2 was acknowledged in epoch A, then lost in a failover: bob, who had a1 only, is not owed it."""
    logs = two_members()
    logs["alice"] += [close(1012), connect(2, "A"), welcome("sa2", 1, "B"), resync(2, 1, 1, "epoch", "B"),
                      seen(1, "sa", "a1", "B")]
    logs["bob"] = [connect(), welcome("sb", 0), msg(1, "sa", "a1"), close(1012), connect(1, "A"),
                   welcome("sb2", 1, "B"), resync(1, 1, 1, "epoch", "B"), seen(1, "sa", "a1", "B")]
    assert check(logs) == []


def test_a_welcome_in_a_new_epoch_without_a_resync_is_reported():
    logs = two_members()
    logs["bob"] = [connect(), welcome("sb", 0), msg(1, "sa", "a1"), close(1012), connect(1, "A"),
                   welcome("sb2", 2, "B"), msg(2, "sa", "a2", "B")]
    violations = check(logs)
    assert violations[0] == "bob: welcomed in epoch 'B' while in 'A', without a resync"


def test_a_duplicate_frame_acknowledges_and_a_second_seq_for_one_id_is_reported():
    """alice's first send of a2 went out (seq 2) but she lost the echo; her resend gets a duplicate."""
    logs = two_members()
    logs["alice"] = [connect(), welcome("sa", 0), sent("a1"), sent("a2"), msg(1, "sa", "a1"), close(1006),
                     connect(1, "A"), welcome("sa2", 2), msg(2, "sa", "a2"), sent("a2"), duplicate("a2", 2)]
    assert check(logs) == []
    logs["alice"][-1] = msg(3, "sa2", "a2")
    logs["bob"] += [msg(3, "sa2", "a2")]
    violations = check(logs)
    assert any("alice's message 'a2' was published 2 times in epoch 'A'" in v for v in violations), violations


def test_an_acknowledgement_by_duplicate_alone_makes_the_message_owed():
    logs = {"alice": [connect(), welcome("sa", 0), sent("a1"), close(1006), connect(0, "A"),
                      welcome("sa2", 1), sent("a1"), duplicate("a1", 1)],
            "bob": [connect(), welcome("sb", 0), close(1000), connect(0, "A"), welcome("sb2", 1)]}
    violations = check(logs)
    assert any(v.startswith("alice: never got alice's acknowledged message 'a1'") for v in violations)
    assert any(v.startswith("bob: never got alice's acknowledged message 'a1'") for v in violations)


def test_one_seq_seen_as_two_messages_is_reported():
    logs = two_members()
    logs["bob"][-1] = msg(2, "sa", "a9")
    violations = check(logs)
    assert any(v.startswith("room 'r' epoch 'A' seq 2 is 2 different messages") for v in violations)


def test_a_counter_that_went_back_is_a_seq_with_two_messages_even_after_an_ahead_resync():
    """No epochs (the current server): the keys expired, seq 1 was published again."""
    alice = [connect(), welcome("sa", 0, None), sent("a1"), msg(1, "sa", "a1", None), close(1012),
             connect(1), welcome("sa2", 1, None), resync(1, 1, 1, "ahead", None), msg(1, "sb", "b1", None)]
    bob = [connect(), welcome("sb", 0, None), sent("b1"), msg(1, "sb", "b1", None)]
    violations = check({"alice": alice, "bob": bob})
    assert any(v.startswith("room 'r' epoch '' seq 1 is 2 different messages") for v in violations)


def test_a_refused_message_found_in_the_history_is_reported():
    logs = two_members()
    logs["alice"] += [sent("a3"), error("a3")]
    history = {ROOM: [msg(n, "sa", f"a{n}")["frame"] for n in (1, 2, 3)]}
    violations = check(logs, history)
    assert violations == ["alice: message 'a3' (session sa) was refused (unavailable: not published) "
                          "but was published"]
    assert check(logs, {ROOM: history[ROOM][:2]}) == []


def test_a_refused_resend_of_a_message_published_by_another_connection_is_not_reported():
    """The error answers the resend (rate limited): the first attempt, on session sa, was published."""
    logs = two_members()
    logs["alice"] += [close(1006), connect(2, "A"), welcome("sa2", 2), sent("a2"),
                      error("a2", "rate_limited")]
    assert check(logs) == []


def test_unknown_events_are_reported():
    logs = two_members()
    logs["bob"].append({"event": "teleport"})
    assert check(logs) == ["bob: event 4 is of unknown kind 'teleport'"]


# -- a simulated room ------------------------------------------------------------------------------

class SimServer:
    """A room that keeps the contract: one epoch, seq and history; ids deduplicated per sender for
    good; a failover may lose the newest entries (new epoch); an expiry forgets the room (new epoch);
    a trim drops the oldest entries."""

    def __init__(self):
        self.epochs = 1
        self.epoch = "E1"
        self.seq = 0
        self.history = []  # (seq, session, id, body)
        self.ids = {}  # (sender token, id) -> seq
        self.clients = []
        self.sessions = 0

    def frame(self, seq, session, msg_id, body):
        return frame("message", epoch=self.epoch, seq=seq, body=body, session=session, id=msg_id)

    def new_epoch(self):
        self.epochs += 1
        self.epoch = f"E{self.epochs}"
        for client in self.clients:
            if client.queue is not None:
                client.closed(1012)

    def connect(self, client):
        self.sessions += 1
        client.session = f"s{self.sessions}"
        queue = client.queue = deque()
        queue.append(frame("welcome", session=client.session, seq=self.seq, epoch=self.epoch))
        if client.last is None:
            return
        oldest = self.history[0][0] if self.history else None
        start, reason = client.last + 1, None
        if client.epoch != self.epoch:
            reason = "epoch"
        elif client.last < self.seq and (oldest is None or client.last < oldest - 1):
            reason = "too_old"
        if reason is not None:
            start = oldest if oldest is not None else self.seq + 1
            queue.append(frame("resync", since=client.last, epoch=self.epoch, seq=self.seq, reason=reason,
                               **{"from": start}))
        queue.extend(self.frame(*entry) for entry in self.history if entry[0] >= start)

    def publish(self, client, msg_id, body):
        known = self.ids.get((client.token, msg_id))
        if known is not None:
            client.queue.append({"type": "duplicate", "id": msg_id, "epoch": self.epoch, "seq": known})
            return
        self.seq += 1
        self.ids[(client.token, msg_id)] = self.seq
        self.history.append((self.seq, client.session, msg_id, body))
        for member in self.clients:
            if member.queue is not None:
                if member.lose_next:
                    member.lose_next = False  # the process's subscription missed it
                else:
                    member.queue.append(self.frame(self.seq, client.session, msg_id, body))

    def failover(self, lost):
        lost = min(lost, len(self.history))
        for seq, *_ in self.history[len(self.history) - lost:]:
            for key in [key for key, known in self.ids.items() if known == seq]:
                del self.ids[key]
        del self.history[len(self.history) - lost:]
        self.seq -= lost
        self.new_epoch()

    def expire(self):
        self.seq, self.history, self.ids = 0, [], {}
        self.new_epoch()

    def trim(self, keep):
        del self.history[: max(0, len(self.history) - max(1, keep))]


class SimClient:
    """A client following the contract, logging in the checker's format."""

    def __init__(self, server, n):
        self.server, self.name, self.token = server, f"c{n}", f"token{n}"
        self.log = []
        self.epoch = self.last = None
        self.delivered = set()
        self.sessions = set()
        self.pending = {}
        self.count = 0
        self.queue = None
        self.session = None
        self.lose_next = False
        server.clients.append(self)

    def connect(self):
        if self.queue is not None:
            return
        query = "" if self.last is None else f"?since={self.last}&epoch={self.epoch}"
        self.log.append({"event": "connect", "query": query})
        self.server.connect(self)

    def closed(self, code):
        self.queue = None
        self.log.append({"event": "close", "code": code})

    def send(self, msg_id, body):
        self.log.append({"event": "sent", "id": msg_id, "body": body})
        self.server.publish(self, msg_id, body)

    def new_message(self, refused=False):
        while self.queue and self.session not in self.sessions:  # it sends once it has its welcome
            self.handle(self.queue.popleft())
        if self.queue is None:
            return
        self.count += 1
        msg_id, body = f"{self.name}m{self.count}", f"{self.name} says {self.count}"
        if refused:  # the server refuses it before anything else (rate limited)
            self.log.append({"event": "sent", "id": msg_id, "body": body})
            self.queue.append({"type": "error", "error": "rate_limited", "id": msg_id})
            return
        self.pending[msg_id] = body
        self.send(msg_id, body)

    def pump(self, count):
        while count > 0 and self.queue:
            count -= 1
            self.handle(self.queue.popleft())

    def handle(self, f):
        kind = f["type"]
        if kind == "welcome":
            self.log.append({"event": "welcome", "frame": f})
            self.sessions.add(f["session"])
            if self.last is None:
                self.epoch, self.last = f["epoch"], f["seq"]
            for msg_id, body in list(self.pending.items()):
                self.send(msg_id, body)
        elif kind == "resync":
            self.log.append({"event": "resync", "frame": f})
            self.epoch, self.last = f["epoch"], f["from"] - 1
        elif kind == "duplicate":
            self.log.append({"event": "duplicate", "frame": f})
            self.pending.pop(f["id"], None)
        elif kind == "error":
            self.log.append({"event": "error", "frame": f})
            self.pending.pop(f["id"], None)
        else:
            copy_key = (f["session"], f["id"])
            if f["session"] in self.sessions:
                self.pending.pop(f["id"], None)
            if f["epoch"] != self.epoch or f["seq"] > self.last + 1:
                reason = "epoch" if f["epoch"] != self.epoch else "gap"
                self.log.append({"event": "dropped", "frame": f, "reason": reason})
                self.closed(1000)  # it resumes on its next connect
            elif f["seq"] <= self.last:
                self.log.append({"event": "dropped", "frame": f, "reason": "behind"})
                self.closed(1000)
            else:
                self.last = f["seq"]
                if copy_key in self.delivered:
                    self.log.append({"event": "dropped", "frame": f, "reason": "seen"})
                else:
                    self.delivered.add(copy_key)
                    self.log.append({"event": "message", "frame": f})


def simulate(script, clients):
    server = SimServer()
    sims = [SimClient(server, n) for n in range(clients)]
    for op, n, arg in script:
        client = sims[n % clients]
        if op == "connect":
            client.connect()
        elif op == "drop" and client.queue is not None:
            client.closed(1006)
        elif op == "send":
            client.new_message()
        elif op == "refuse":
            client.new_message(refused=True)
        elif op == "pump":
            client.pump(4 * arg)
        elif op == "lose" and client.queue is not None:
            client.lose_next = True
        elif op == "failover":
            server.failover(arg % 3)  # usually little is lost
        elif op == "expire":
            server.expire()
        elif op == "trim":
            server.trim(arg)
    # The end: every client comes back, gets its answers, then resumes once more to catch up.
    for _ in range(10):
        for client in sims:
            client.lose_next = False
            client.connect()
            client.pump(10**6)
        if not any(client.pending or client.queue is None for client in sims):
            break
    for client in sims:
        client.closed(1000)
        client.connect()
        client.pump(10**6)
    history = {ROOM: [server.frame(*entry) for entry in server.history]}
    return copy.deepcopy(({client.name: client.log for client in sims}, history))  # frames are shared


# Weighted by repetition: mostly traffic, now and then a fault.
OPS = st.sampled_from(["connect"] * 3 + ["send"] * 6 + ["pump"] * 6 + ["drop"] * 2 + ["trim"] * 2
                      + ["refuse", "lose", "failover", "expire"])
scripts = st.lists(st.tuples(OPS, st.integers(0, 3), st.integers(0, 6)), min_size=20, max_size=80)
PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@PROPERTY
@given(script=scripts, clients=st.integers(1, 4))
def test_a_simulated_room_that_keeps_the_contract_passes(script, clients):
    logs, history = simulate(script, clients)
    covered = ("resync", "dropped", "duplicate", "error", "message")
    for kind in sorted({e.get("reason") or e["frame"].get("reason") or e["event"] for log in logs.values()
                        for e in log if e["event"] in covered}):
        event(kind)  # what the examples cover: pytest --hypothesis-show-statistics
    assert check(logs, history) == []


def delivered_events(logs):
    return [(name, n) for name, log in logs.items() for n, e in enumerate(log) if e["event"] == "message"]


def a_delivery(script, clients, data):
    """A simulated run, and one of its deliveries drawn: (logs, history, client, event index)."""
    logs, history = simulate(script, clients)
    candidates = delivered_events(logs)
    assume(candidates)
    return (logs, history, *data.draw(st.sampled_from(candidates)))


@PROPERTY
@given(script=scripts, clients=st.integers(1, 4), data=st.data())
def test_dropping_one_delivery_is_reported(script, clients, data):
    logs, history, name, n = a_delivery(script, clients, data)
    del logs[name][n]
    assert check(logs, history) != []


@PROPERTY
@given(script=scripts, clients=st.integers(1, 4), data=st.data())
def test_delivering_one_message_twice_is_reported(script, clients, data):
    logs, history, name, n = a_delivery(script, clients, data)
    logs[name].insert(n + 1, copy.deepcopy(logs[name][n]))
    assert check(logs, history) != []


@PROPERTY
@given(script=scripts, clients=st.integers(1, 4), data=st.data())
def test_swapping_two_deliveries_is_reported(script, clients, data):
    logs, history = simulate(script, clients)
    candidates = [(name, n) for name, n in delivered_events(logs)
                  if n + 1 < len(logs[name]) and logs[name][n + 1]["event"] == "message"]
    assume(candidates)
    name, n = data.draw(st.sampled_from(candidates))
    logs[name][n], logs[name][n + 1] = logs[name][n + 1], logs[name][n]
    assert check(logs, history) != []


@PROPERTY
@given(script=scripts, clients=st.integers(1, 4), data=st.data())
def test_reusing_a_seq_of_an_epoch_for_another_message_is_reported(script, clients, data):
    """One delivery shows another message at a seq that another client, or the history, saw too."""
    logs, history = simulate(script, clients)
    seen_by = {}
    for name, log in [*logs.items(), ("history", [{"event": "message", "frame": f} for f in history[ROOM]])]:
        for e in log:
            if e["event"] in ("message", "dropped"):
                f = e["frame"]
                seen_by.setdefault((f["epoch"], f["seq"]), set()).add(name)
    messages = {(e["frame"]["session"], e["frame"]["id"]) for log in logs.values() for e in log
                if e["event"] == "message"}
    candidates = [(name, n) for name, n in delivered_events(logs)
                  if len(seen_by[(logs[name][n]["frame"]["epoch"], logs[name][n]["frame"]["seq"])]) > 1]
    assume(candidates and len(messages) > 1)
    name, n = data.draw(st.sampled_from(candidates))
    target = logs[name][n]["frame"]
    session, msg_id = data.draw(st.sampled_from(sorted(messages - {(target["session"], target["id"])})))
    target.update(session=session, id=msg_id, body=f"another body for {msg_id}")
    assert check(logs, history) != []
