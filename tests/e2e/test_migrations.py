"""Migrations inside releases on a real swarm with the stack's Postgres (docs/operations.md,
"Migrations: expand, then contract"): promote.sh lints and applies the new image's migrations as
Swarm jobs before the new color starts."""

import base64

import pytest

from tests.e2e.helpers import docker, handshakes_and_queries, service_container, stacks, version
from tests.e2e.test_release import promote_under_load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.takes_standing_system]

MIGRATIONS = "/app/service/members/migrations"
# An expand: a nullable column, which the color still running never notices.
ADD_TOPIC = """
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("members", "0002_api_keys")]
    operations = [migrations.AddField("room", "e2e_topic", models.CharField(max_length=200, null=True))]
"""
# What the color still running would break on: its queries name the column.
DROP_COLUMN = """
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("members", "0003_e2e_room_topic")]
    operations = [migrations.RemoveField("room", "allow_anonymous")]
"""


def with_migration(name, source):
    """Dockerfile lines that add a migration to the image (FROM the running one, derived_image)."""
    encoded = base64.b64encode(source.encode()).decode()
    return ["USER root", f"RUN echo {encoded} | base64 -d > {MIGRATIONS}/{name}.py", "USER app"]


def room_columns():
    """The columns of members_room, from psql inside the Postgres container (trusted on its socket)."""
    query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'members_room'"
    output = docker("exec", service_container("wsapp_postgres"), "psql", "-U", "wsapp", "-d", "wsapp", "-tA",
                    "-c", query)
    return set(output.split())


async def test_a_release_that_adds_a_field_migrates_under_load_and_one_that_drops_a_column_is_refused(
        system, derived_image):
    before = version()["color"]
    after = "green" if before == "blue" else "blue"
    assert "e2e_topic" not in room_columns()
    image = derived_image("wsapp-e2e:add-topic", *with_migration("0003_e2e_room_topic", ADD_TOPIC))
    result, traffic, _ = await promote_under_load("--image", image, clients=50)
    assert result.returncode == 0, result.stderr
    assert "Applying members.0003_e2e_room_topic... OK" in result.stderr
    assert "e2e_topic" in room_columns()
    assert traffic.http_failures == []
    assert before in traffic.http_colors and after in traffic.http_colors, "both colors served during it"
    assert version()["color"] == after
    # Database statements of the new color, which started within this release: its every WebSocket
    # is a reconnect of the storm (docs/accounts.md, "Queries during a release").
    handshakes, queries = handshakes_and_queries(f"wsapp-{after}_app")
    print(f"the new color ({after}) during and after the release: {handshakes} WebSocket handshakes, "
          f"database statements by origin {queries}")
    assert handshakes >= 50 and queries["websocket"] == 0, (handshakes, queries)

    # The next release drops a column the color now serving still uses: refused before anything changes.
    image = derived_image("wsapp-e2e:drop-column",
                          *with_migration("0004_e2e_drop_allow_anonymous", DROP_COLUMN))
    result, traffic, _ = await promote_under_load("--image", image, clients=20)
    assert result.returncode == 1, result.stderr
    assert "(members, 0004_e2e_drop_allow_anonymous)... ERR" in result.stderr
    assert "DROPPING columns" in result.stderr and "the migration linter refused" in result.stderr
    assert "allow_anonymous" in room_columns()
    assert version()["color"] == after and f"wsapp-{before}" not in stacks()
    assert traffic.http_failures == [] and not traffic.closes, "a refused release touches no client"
