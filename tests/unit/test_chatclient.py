"""The fault tier's chat client (testkit/chatclient.py): what it does with each frame, without a
network; its log must satisfy the checker."""

from testkit.chatclient import ChatClient
from testkit.checker import check


def client():
    chat = ChatClient("ws://127.0.0.1:1", "r", "alice")
    chat.since = None
    return chat


def welcome(chat, session, seq, epoch="A"):
    chat.since = chat.last
    return chat.handle({"type": "welcome", "room": "r", "session": session, "seq": seq, "epoch": epoch})


def message(seq, session, msg_id, epoch="A"):
    return {"type": "message", "room": "r", "epoch": epoch, "seq": seq, "body": msg_id, "session": session,
            "id": msg_id}


def test_the_first_connection_has_only_the_sender_then_it_resumes_from_its_epoch_and_seq():
    chat = client()
    assert chat.query() == f"?sender={chat.token}"
    welcome(chat, "s1", 7)
    assert chat.handle(message(8, "s2", "x")) is None
    assert chat.query() == f"?since=8&epoch=A&sender={chat.token}"


def test_a_server_without_epochs_is_resumed_without_one():
    chat = client()
    chat.handle({"type": "welcome", "room": "r", "session": "s1", "seq": 3})
    chat.handle({"type": "message", "room": "r", "seq": 4, "body": "b", "session": "s2", "id": "x"})
    assert chat.query() == f"?since=4&sender={chat.token}"


def test_its_echo_or_a_duplicate_acknowledges_and_an_error_gives_the_message_up():
    chat = client()
    chat.pending.update(m1="m1", m2="m2", m3="m3")
    welcome(chat, "s1", 0)
    chat.handle(message(1, "s1", "m1"))
    chat.handle({"type": "duplicate", "id": "m2", "seq": 9, "epoch": "A"})
    chat.handle({"type": "error", "error": "unavailable", "id": "m3"})
    assert (chat.acked, chat.refused, chat.pending) == ({"m1", "m2"}, {"m3"}, {})


def test_a_gap_another_epoch_or_an_unknown_message_below_last_make_it_resume():
    chat = client()
    welcome(chat, "s1", 5)
    assert chat.handle(message(7, "s2", "x")) == "gap"
    assert chat.handle(message(6, "s2", "y", epoch="B")) == "epoch"
    assert chat.handle(message(5, "s2", "z")) == "behind"
    assert [e.get("reason") for e in chat.log if e["event"] == "dropped"] == ["gap", "epoch", "behind"]
    assert chat.last == 5


def test_after_an_epoch_resync_it_drops_the_replay_it_already_has_and_goes_on():
    chat = client()
    welcome(chat, "s1", 0)
    chat.handle(message(1, "s2", "x"))
    welcome(chat, "s3", 2, epoch="B")
    assert chat.awaiting_resync
    chat.handle({"type": "resync", "room": "r", "since": 1, "epoch": "B", "from": 1, "seq": 2,
                 "reason": "epoch"})
    assert chat.handle(message(1, "s2", "x", epoch="B")) is None
    assert chat.handle(message(2, "s2", "y", epoch="B")) is None
    assert [(e["event"], e["frame"]["id"]) for e in chat.log if "id" in e.get("frame", {})] == [
        ("message", "x"), ("dropped", "x"), ("message", "y")]
    assert (chat.epoch, chat.last) == ("B", 2)


def test_a_since_above_the_rooms_seq_waits_for_the_ahead_resync():
    chat = client()
    welcome(chat, "s1", 9)
    welcome(chat, "s2", 3)
    assert chat.awaiting_resync


def test_an_unknown_frame_is_logged_for_the_checker_to_reject():
    chat = client()
    welcome(chat, "s1", 0)
    chat.handle({"type": "surprise"})
    assert check({"alice": [{"event": "connect", "query": ""}, *chat.log]}) == [
        "alice: event 2 is of unknown kind 'unknown'"]
