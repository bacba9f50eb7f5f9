"""Operator commands, run as `python -m rooms.ctl COMMAND` inside the image or on a host.

  server-args                  validate every setting (config.settings) and print the options
                               entrypoint.sh gives Uvicorn, one per line
  wait-redis [--timeout S]     wait until Redis answers PING (default: REDIS_WAIT_SECONDS): REDIS_URL,
                               or with REDIS_SENTINELS the primary they name
  probe                        container healthcheck: exit 0 if /readyz says ready, draining, or
                               not ready after having been ready (a Redis outage: restarting
                               replicas would not fix it and would cut every WebSocket)
  drain COLOR --seconds S      tell every process of COLOR to release its connections
  undrain COLOR                cancel a drain
"""

import argparse
import asyncio
import os
import sys
import time

from .names import DEFAULT_PORT, DRAIN, UNDRAIN
from .redis_url import RedisUrlError, describe, layer_host, redis_sentinels, redis_url, sentinel_kwargs


def load_settings():
    """Django's settings, validated (the one place that does), or None after saying what is wrong."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return None
    from django.conf import settings

    return settings


def server_args(args):
    """The shell only passes the settings on: it neither validates them nor knows their defaults."""
    settings = load_settings()
    if settings is None:
        return 2
    options = {
        "--port": settings.PORT,
        "--workers": settings.WEB_CONCURRENCY,
        "--ws-max-size": settings.WS_MAX_MESSAGE_BYTES,
        "--ws-ping-interval": settings.WS_PING_INTERVAL,
        "--ws-ping-timeout": settings.WS_PING_TIMEOUT,
        "--timeout-graceful-shutdown": settings.GRACEFUL_TIMEOUT,
        "--forwarded-allow-ips": settings.FORWARDED_ALLOW_IPS,
    }
    for option, value in options.items():
        print(f"{option}\n{value}")
    return 0


def configured_redis():
    """(REDIS_URL with the password of REDIS_PASSWORD_FILE, Sentinels or None), as the service reads
    them (rooms.redis_url), or None after printing what is wrong."""
    try:
        sentinels = redis_sentinels()
        url = redis_url()
    except RedisUrlError as exc:
        print(exc, file=sys.stderr)
        return None
    if not url and sentinels is None:
        print("REDIS_URL or REDIS_SENTINELS must be set: control messages travel through the Redis "
              "channel layer", file=sys.stderr)
        return None
    return url, sentinels


def sync_client(url, sentinels, timeout):
    import redis
    from redis.sentinel import Sentinel

    if sentinels is None:
        return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    sentinel = Sentinel(sentinels.addresses, sentinel_kwargs=sentinel_kwargs(sentinels, timeout))
    return sentinel.master_for(sentinels.master, username=sentinels.username, password=sentinels.password,
                               socket_connect_timeout=timeout, socket_timeout=timeout)


def wait_redis(args):
    import redis

    configured = configured_redis()
    if configured is None:
        return 2
    client = sync_client(*configured, timeout=1)
    where = describe(*configured)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            client.ping()
            return 0
        except redis.AuthenticationError as exc:  # waiting does not fix a wrong password
            print(f"Redis at {where} refused the password: {exc}", file=sys.stderr)
            return 1
        except redis.ResponseError as exc:
            if "auth" in str(exc).lower():  # a Sentinel that wants a password (NOAUTH, WRONGPASS)
                print(f"Redis at {where} refused the password: {exc}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"Redis at {where} did not answer: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        except (redis.RedisError, OSError) as exc:  # MasterNotFoundError is a ConnectionError
            if time.monotonic() > deadline:
                print(f"Redis at {where} did not answer: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)


def probe(args):
    import json
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{os.environ.get('PORT') or DEFAULT_PORT}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        state = json.loads(exc.read() or b"{}")
        return 0 if state.get("draining") or state.get("ever_ready") else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def control(args, message):
    """Send a control message to every process of a color, two ways: published on the color's
    pub/sub channel (PUBLISH allocates nothing, so a Redis at maxmemory still carries it) and sent to
    the channel-layer group (queued for a process that is reconnecting). Each carries the same stamp,
    Redis's clock in microseconds: a process applies it once, and never after a newer one
    (rooms.control). Without Redis there is no stamp, and the channel layer fails too."""
    import json

    from channels_redis.core import RedisChannelLayer

    from .names import CHANNEL_LAYER_PREFIX, CONTROL_CHANNEL_PREFIX, control_group

    configured = configured_redis()
    if configured is None:
        return 2
    try:
        client = sync_client(*configured, timeout=3)
        seconds, micros = client.time()  # one clock for every operator and node: the primary's
        message = {**message, "stamp": seconds * 1_000_000 + micros}
        heard = client.publish(CONTROL_CHANNEL_PREFIX + args.color, json.dumps(message))
        published = f"{heard} processes heard it"
    except Exception as exc:
        heard, published = None, f"failed: {exc}"
    layer = RedisChannelLayer(hosts=[layer_host(*configured, timeout=3)], prefix=CHANNEL_LAYER_PREFIX)

    async def send():
        await layer.group_send(control_group(args.color), message)

    try:
        asyncio.run(send())
        queued = "queued"
    except Exception as exc:
        queued = f"failed: {exc!r}"
    print(f"sent {message['type']} to {args.color} (pub/sub: {published}; channel layer: {queued})")
    return 0 if heard or queued == "queued" else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rooms.ctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("server-args")
    p = sub.add_parser("wait-redis")
    p.add_argument("--timeout", type=float)
    p = sub.add_parser("probe")
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("drain")
    p.add_argument("color")
    p.add_argument("--seconds", type=float, default=30.0)
    p = sub.add_parser("undrain")
    p.add_argument("color")
    args = parser.parse_args(argv)
    if args.command == "server-args":
        return server_args(args)
    if args.command == "wait-redis":
        if args.timeout is None:  # the setting's default and validation, as for the server's options
            settings = load_settings()
            if settings is None:
                return 2
            args.timeout = settings.REDIS_WAIT_SECONDS
        print(f"waiting up to {args.timeout:g}s for Redis", file=sys.stderr)
        return wait_redis(args)
    if args.command == "probe":
        return probe(args)
    if args.command == "drain":
        return control(args, {"type": DRAIN, "seconds": args.seconds})
    return control(args, {"type": UNDRAIN})


if __name__ == "__main__":
    sys.exit(main())
