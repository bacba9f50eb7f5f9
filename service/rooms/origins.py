"""The WebSocket Origin check: a handshake is accepted only from one of the public origins.

An origin is a scheme, a host and a port (RFC 6454): `http://chat.example`, `https://chat.example` and
`http://chat.example:8080` are three different sites, and a page of one must not open the socket of
another. PUBLIC_ORIGINS (config.settings) lists them; this module parses them and checks the header.
No Django imports: the settings use it.
"""

from urllib.parse import urlsplit

ANY_ORIGIN = "*"  # every origin: for development only (the settings refuse it unless DJANGO_DEBUG)
DEFAULT_PORTS = {"http": 80, "https": 443}


class InvalidOrigin(ValueError):
    pass


def parse_origin(text):
    """(scheme, host, port) of `scheme://host[:port]`, the port made explicit; InvalidOrigin otherwise."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a bad port or IPv6 literal
        raise InvalidOrigin(f"{text!r} is not scheme://host[:port]: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidOrigin(f"{text!r} is not scheme://host[:port] with scheme http or https")
    if not parts.hostname or parts.username is not None or parts.path or parts.query or parts.fragment:
        raise InvalidOrigin(f"{text!r} is not scheme://host[:port]: an origin has no user, path or query")
    if "*" in parts.hostname:
        raise InvalidOrigin(f"{text!r}: a host name with '*' matches nothing; list each origin")
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


def origins_from_hosts(hosts):
    """The default for PUBLIC_ORIGINS: each ALLOWED_HOSTS name over http and https on their default ports.

    A subdomain pattern (`.example.com`) gives none: the origins it stands for are not known."""
    origins = []
    for host in hosts:
        if host == ANY_ORIGIN:
            origins.append(ANY_ORIGIN)
        elif not host.startswith("."):
            origins += [f"http://{host}", f"https://{host}"]
    return origins


def format_origin(origin):
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if DEFAULT_PORTS[scheme] == port else f":{port}")


def origin_of(value):
    """The parsed origin of an Origin header's value (bytes), or None if it is malformed."""
    try:
        return parse_origin(value.decode("latin-1"))
    except InvalidOrigin:
        return None


class OriginCheck:
    """ASGI middleware for WebSockets: the application for a handshake from one of `allowed` (parsed
    origins, or ANY_ORIGIN), else a refusal before the handshake is answered (Uvicorn answers 403).

    Handshakes repeat a few Origin values, and parsing one costs more than the rest of the check: the
    verdict on each value is kept, for at most VERDICTS_MAX values of at most VERDICT_MAX_BYTES. Once
    that many are kept, others are parsed every time (no eviction: whatever a client sends, the values
    already kept stay)."""

    VERDICTS_MAX = 256
    VERDICT_MAX_BYTES = 256

    def __init__(self, application, allowed):
        self.application = application
        self.allowed = frozenset(allowed)
        # The allowed origins as browsers send them: answered without parsing even when a flood of
        # other values came first and filled the verdicts.
        self.sent = frozenset(format_origin(origin).encode("latin-1") for origin in self.allowed
                              if origin != ANY_ORIGIN)
        self.verdicts = {}  # Origin header value (bytes) -> whether it is allowed

    def allows(self, scope):
        if ANY_ORIGIN in self.allowed:
            return True
        values = [value for name, value in scope.get("headers", ()) if name == b"origin"]
        if len(values) != 1:  # none, or several: which one is meant?
            return False
        value = values[0]
        verdict = self.verdicts.get(value)
        if verdict is None:
            verdict = value in self.sent or origin_of(value) in self.allowed
            if len(value) <= self.VERDICT_MAX_BYTES and len(self.verdicts) < self.VERDICTS_MAX:
                self.verdicts[value] = verdict
        return verdict

    async def __call__(self, scope, receive, send):
        if self.allows(scope):
            return await self.application(scope, receive, send)
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.close"})
