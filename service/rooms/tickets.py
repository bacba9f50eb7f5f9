"""Connection tickets: who a WebSocket is, checked at the handshake without the database.

A ticket is issued over HTTP to a logged-in user (members.views.ticket, which reads the database) and
signed with the first of TICKET_KEYS (django.core.signing, HMAC-SHA256); any of the keys verifies
it, so keys rotate without cutting anyone off. It carries the user's id, display name, the private
rooms it admits to, when it was first issued and when it expires (TICKET_SECONDS). The handshake
and the `renew` frame only verify and re-sign: no query, so a release's reconnect storm and a
Postgres outage cost the database nothing (docs/accounts.md, "Why tickets").
"""

import time
from typing import NamedTuple
from urllib.parse import parse_qsl

from django.conf import settings
from django.core import signing

SALT = "wsapp.connection-ticket"
MAX_CHARS = 4096  # a ticket longer than this is refused unread
QUERY_NAME = "ticket"


class InvalidTicket(Exception):
    """The ticket cannot be used: forged, malformed, signed with an unknown key, or expired."""


class Ticket(NamedTuple):
    user: int
    name: str
    rooms: frozenset
    issued: int  # when it was first issued over HTTP (renewals keep it)
    expires: int

    def valid(self, now=None):
        return (time.time() if now is None else now) < self.expires


def issue(user, name, rooms, issued=None, now=None):
    """(token, Ticket) for a user admitted to `rooms` (the private ones it names)."""
    now = int(time.time() if now is None else now)
    ticket = Ticket(int(user), str(name), frozenset(rooms), int(issued or now), now + settings.TICKET_SECONDS)
    payload = {"u": ticket.user, "n": ticket.name, "r": sorted(ticket.rooms), "a": ticket.issued,
               "e": ticket.expires}
    return signing.dumps(payload, key=settings.TICKET_KEYS[0], salt=SALT, compress=True), ticket


def verify(token, now=None):
    """The Ticket of a token; InvalidTicket says why not."""
    if not isinstance(token, str) or not token or len(token) > MAX_CHARS:
        raise InvalidTicket("the ticket is missing or too long")
    try:
        payload = signing.loads(token, key=settings.TICKET_KEYS[0], fallback_keys=settings.TICKET_KEYS[1:],
                                salt=SALT)
        ticket = Ticket(int(payload["u"]), str(payload["n"]), frozenset(map(str, payload["r"])),
                        int(payload["a"]), int(payload["e"]))
    except signing.BadSignature:
        raise InvalidTicket("the ticket's signature is not valid") from None
    except (KeyError, TypeError, ValueError):
        raise InvalidTicket("the ticket is malformed") from None
    if not ticket.valid(now):
        raise InvalidTicket("the ticket expired; get a new one")
    return ticket


def renew(ticket, now=None):
    """(token, Ticket): the same claims for another TICKET_SECONDS, as long as the ticket was first
    issued less than TICKET_RENEW_SECONDS ago (after that, the page asks the database again)."""
    now = int(time.time() if now is None else now)
    if not ticket.valid(now):
        raise InvalidTicket("the ticket expired; get a new one")
    if now - ticket.issued >= settings.TICKET_RENEW_SECONDS:
        raise InvalidTicket(f"the ticket was issued over {settings.TICKET_RENEW_SECONDS}s ago; get a new one")
    return issue(ticket.user, ticket.name, ticket.rooms, issued=ticket.issued, now=now)


def from_query(query_string):
    """The verified Ticket of a handshake's `ticket=` parameter; None without one."""
    tokens = [value for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
              if name == QUERY_NAME]
    if not tokens:
        return None
    if len(tokens) > 1:
        raise InvalidTicket("give 'ticket' once")
    return verify(tokens[0])
