"""Connection tickets (rooms.tickets): signed, short-lived, verified with no database, renewable for a
bounded time, and valid under any listed key so keys can rotate."""

import pytest
from django.test import override_settings

from rooms import tickets

KEY_A, KEY_B = "a" * 40, "b" * 40


@override_settings(TICKET_KEYS=[KEY_A], TICKET_SECONDS=300)
def test_a_ticket_carries_the_user_its_name_and_rooms():
    token, issued = tickets.issue(7, "Alice Doe", ["board", "ops"], now=1000)
    ticket = tickets.verify(token, now=1001)
    assert ticket == issued == tickets.Ticket(7, "Alice Doe", frozenset({"board", "ops"}), 1000, 1300)


@override_settings(TICKET_KEYS=[KEY_A], TICKET_SECONDS=300)
def test_an_expired_ticket_is_refused():
    token, _ = tickets.issue(7, "Alice", [], now=1000)
    with pytest.raises(tickets.InvalidTicket, match="expired"):
        tickets.verify(token, now=1300)


@override_settings(TICKET_KEYS=[KEY_A])
def test_a_changed_ticket_is_refused():
    token, _ = tickets.issue(7, "Alice", [], now=1000)
    forged = token.replace(token.split(":")[0], tickets.signing.b64_encode(b'{"u":1}').decode())
    for bad in (forged, token[:-2] + "xx", "not a ticket", "", "x" * 5000):
        with pytest.raises(tickets.InvalidTicket):
            tickets.verify(bad, now=1001)


def test_keys_rotate_without_refusing_tickets_signed_with_the_old_one():
    with override_settings(TICKET_KEYS=[KEY_A]):
        old, _ = tickets.issue(7, "Alice", ["board"], now=1000)
    with override_settings(TICKET_KEYS=[KEY_B, KEY_A]):  # the new key signs, the old one still verifies
        assert tickets.verify(old, now=1001).rooms == {"board"}
        new, _ = tickets.issue(7, "Alice", ["board"], now=1000)
    with override_settings(TICKET_KEYS=[KEY_B]), pytest.raises(tickets.InvalidTicket, match="signature"):
        tickets.verify(old, now=1001)
    with override_settings(TICKET_KEYS=[KEY_B]):
        assert tickets.verify(new, now=1001).user == 7


@override_settings(TICKET_KEYS=[KEY_A], TICKET_SECONDS=300, TICKET_RENEW_SECONDS=3600)
def test_renewal_extends_a_ticket_until_the_renew_limit():
    _, ticket = tickets.issue(7, "Alice", ["board"], now=1000)
    token, renewed = tickets.renew(ticket, now=1200)
    assert renewed.expires == 1500 and renewed.issued == 1000 and tickets.verify(token, now=1400) == renewed
    late = renewed._replace(expires=5000)
    with pytest.raises(tickets.InvalidTicket, match="get a new one"):
        tickets.renew(late, now=4600)


@override_settings(TICKET_KEYS=[KEY_A])
def test_the_query_string_gives_at_most_one_ticket():
    token, _ = tickets.issue(7, "Alice", [])
    assert tickets.from_query(b"since=3") is None
    assert tickets.from_query(f"sender=abc&ticket={token}".encode()).user == 7
    with pytest.raises(tickets.InvalidTicket, match="once"):
        tickets.from_query(f"ticket={token}&ticket={token}".encode())
