"""rooms.redis_url: REDIS_URL with the password from REDIS_PASSWORD_FILE merged in, or the Sentinels."""

import re

import pytest
import redis
from channels_redis.utils import create_pool
from redis.asyncio.sentinel import SentinelConnectionPool

from rooms.redis_url import RedisUrlError, Sentinels, layer_host, redacted, redis_sentinels, redis_url


@pytest.fixture
def secret(tmp_path):
    def write(text):
        path = tmp_path / "redis_password"
        path.write_text(text)
        return str(path)
    return write


def test_without_a_password_file_the_url_is_unchanged():
    assert redis_url({"REDIS_URL": "redis://r:6379/0"}) == "redis://r:6379/0"
    assert redis_url({}) == ""


def test_the_password_is_merged_and_quoted(secret):
    url = redis_url({"REDIS_URL": "redis://r:6379/0", "REDIS_PASSWORD_FILE": secret("p@ss:w/rd\n")})
    assert url == "redis://:p%40ss%3Aw%2Frd@r:6379/0"
    assert redis.connection.parse_url(url)["password"] == "p@ss:w/rd"
    assert redacted(url) == "redis://:***@r:6379/0"


def test_a_user_name_is_kept(secret):
    url = redis_url({"REDIS_URL": "rediss://app@r:6380/1", "REDIS_PASSWORD_FILE": secret("pw")})
    assert url == "rediss://app:pw@r:6380/1"


def test_a_unix_socket_gets_the_password_as_a_parameter(secret):
    url = redis_url({"REDIS_URL": "unix:///run/redis.sock?db=0", "REDIS_PASSWORD_FILE": secret("pw")})
    assert url == "unix:///run/redis.sock?db=0&password=pw"


@pytest.mark.parametrize("environ, message", [
    ({"REDIS_URL": "http://r"}, "is not a redis://"),
    ({"REDIS_PASSWORD_FILE": "/x"}, "REDIS_URL \\(or REDIS_SENTINELS\\) is empty"),
    ({"REDIS_URL": "redis://r", "REDIS_PASSWORD_FILE": "/nonexistent/file"}, "cannot be read"),
    ({"REDIS_URL": "redis://:a@r", "REDIS_PASSWORD_FILE": "SECRET"}, "use one"),
    ({"REDIS_URL": "redis://r", "REDIS_PASSWORD_FILE": "EMPTY"}, "is empty"),
])
def test_bad_settings_say_what_to_fix(secret, environ, message):
    environ = dict(environ)
    if environ.get("REDIS_PASSWORD_FILE") == "SECRET":
        environ["REDIS_PASSWORD_FILE"] = secret("pw")
    if environ.get("REDIS_PASSWORD_FILE") == "EMPTY":
        environ["REDIS_PASSWORD_FILE"] = secret("\n")
    with pytest.raises(RedisUrlError, match=message):
        redis_url(environ)


def test_sentinels_are_parsed_with_the_default_port_and_master(secret):
    sentinels = redis_sentinels({"REDIS_SENTINELS": " wsapp_sentinel:26379, s2 ,[::1]:5000,10.0.0.7:1",
                                 "REDIS_PASSWORD_FILE": secret("pw\n")})
    assert sentinels == Sentinels(
        (("wsapp_sentinel", 26379), ("s2", 26379), ("::1", 5000), ("10.0.0.7", 1)), "wsapp", "pw"
    )
    assert redis_url({"REDIS_SENTINELS": "s:1", "REDIS_PASSWORD_FILE": secret("pw")}) == ""
    assert redis_sentinels({"REDIS_SENTINELS": "s", "REDIS_SENTINEL_MASTER": "other"}).master == "other"
    assert redis_sentinels({"REDIS_SENTINELS": "s"}).password is None
    assert redis_sentinels({"REDIS_URL": "redis://r"}) is None


@pytest.mark.parametrize("environ, message", [
    ({"REDIS_SENTINELS": "s:1", "REDIS_URL": "redis://r"}, "both set: use one"),
    ({"REDIS_SENTINELS": "s:0"}, "'s:0' has no port between 1 and 65535"),
    ({"REDIS_SENTINELS": "s:x"}, "'s:x' has no port"),
    ({"REDIS_SENTINELS": "[::1]x"}, "has no port"),
    ({"REDIS_SENTINELS": ":1"}, "':1' is not host:port"),
    ({"REDIS_SENTINELS": "a b:1"}, "is not host:port"),
    ({"REDIS_SENTINELS": " , "}, "lists no Sentinel"),
    ({"REDIS_SENTINELS": "s", "REDIS_SENTINEL_MASTER": "my master"}, "REDIS_SENTINEL_MASTER must be"),
    ({"REDIS_SENTINELS": "s", "REDIS_PASSWORD_FILE": "/nonexistent/file"}, "cannot be read"),
])
def test_bad_sentinel_settings_say_what_to_fix(environ, message):
    with pytest.raises(RedisUrlError, match=re.escape(message)):
        redis_sentinels(environ)


def test_the_channel_layer_gets_a_sentinel_pool_that_authenticates_to_both():
    sentinels = Sentinels((("s1", 26379), ("s2", 26380)), "wsapp", "pw")
    host = layer_host("", sentinels, 3, max_connections=10)
    pool = create_pool(host)
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "wsapp"
    assert pool.connection_kwargs["password"] == "pw" and pool.max_connections == 10
    sentinel_pool = pool.sentinel_manager.sentinels[1].connection_pool
    assert sentinel_pool.connection_kwargs["password"] == "pw"
    assert (sentinel_pool.connection_kwargs["host"], sentinel_pool.connection_kwargs["port"]) == ("s2", 26380)
    plain = {"address": "redis://r", "max_connections": 10}
    assert layer_host("redis://r", None, 3, max_connections=10) == plain


def test_the_user_name_is_merged_with_the_password(secret):
    environ = {"REDIS_URL": "redis://r:6379/0",
               "REDIS_USERNAME": "wsapp", "REDIS_PASSWORD_FILE": secret("pw")}
    url = redis_url(environ)
    assert url == "redis://wsapp:pw@r:6379/0"
    parsed = redis.connection.parse_url(url)
    assert (parsed["username"], parsed["password"]) == ("wsapp", "pw")
    environ["REDIS_URL"] = "unix:///s.sock"
    assert redis_url(environ) == "unix:///s.sock?username=wsapp&password=pw"


def test_sentinels_carry_the_user_name_to_redis_and_to_the_sentinels(secret):
    sentinels = redis_sentinels({"REDIS_SENTINELS": "s:1", "REDIS_USERNAME": "wsapp",
                                 "REDIS_PASSWORD_FILE": secret("pw")})
    assert (sentinels.username, sentinels.password) == ("wsapp", "pw")
    host = layer_host("", sentinels, timeout=1)
    assert host["username"] == host["sentinel_kwargs"]["username"] == "wsapp"
    assert redis_sentinels({"REDIS_SENTINELS": "s"}).username is None


@pytest.mark.parametrize("environ, message", [
    ({"REDIS_URL": "redis://app@r", "REDIS_USERNAME": "wsapp"}, "has a user name and REDIS_USERNAME"),
    ({"REDIS_URL": "redis://r", "REDIS_USERNAME": "ws app"}, "REDIS_USERNAME must be"),
    ({"REDIS_USERNAME": "wsapp"}, "REDIS_USERNAME is set but REDIS_URL"),
])
def test_bad_user_names_say_what_to_fix(environ, message):
    with pytest.raises(RedisUrlError, match=message):
        redis_url(environ)
