"""rooms.redis_url: REDIS_URL with the password from REDIS_PASSWORD_FILE merged in."""

import pytest
import redis

from rooms.redis_url import RedisUrlError, redacted, redis_url


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
    ({"REDIS_PASSWORD_FILE": "/x"}, "REDIS_URL is empty"),
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
