"""The docs' tables held against the code, so that the next drift fails here: the settings the
service reads (README "Configuration"), the release file (README "The release file"), the metrics
and the error kinds (docs/protocol.md "GET /metrics"), the frame types (docs/protocol.md "Frames",
README "Protocol in brief"), the close codes (docs/protocol.md "Close codes") and the server-side
kinds that the rules, the alert and docs/operations.md name.

A table is parsed simply: a markdown table whose first column holds backticked names (or a code
and its name). The code is the single source: names come from the modules themselves or, where
the code has no constant (frame types, environment reads), from its source by ast or one regex.
"""

import ast
import functools
import re
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from rooms import metrics
from rooms import names as rooms_names
from rooms.names import SERVER_ERRORS, Error
from tests.helpers import ROOT
from wsserver import protocol as wsprotocol

ROOT = Path(ROOT)
SERVICE = ROOT / "service"
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
OPERATIONS = ROOT / "docs" / "operations.md"
RULES = ROOT / "observability" / "prometheus" / "rules.yml"
ENV_READERS = {"env_str", "env_int", "env_float", "env_bool", "env_list", "getenv", "read"}
NAME = re.compile(r"[A-Z][A-Z0-9_]+")


def section(path, heading):
    """The text under a markdown heading (exact heading line), up to the next heading of its level."""
    text = path.read_text()
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(text, start)
    return text[start : end.start() if end else len(text)]


def table(text, header):
    """Rows (lists of cells) of the markdown table whose header row starts with `| header |`."""
    lines = text.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(f"| {header} |")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def ticked(cell):
    return re.findall(r"`([^`]+)`", cell)


def first_column(rows):
    return {name for row in rows for name in ticked(row[0])}


@functools.cache
def environment_reads():
    """{name: default or None} of every environment variable service/ reads by a constant name."""
    reads = {}
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            name, func = node.args[0].value, node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            from_environ = called in ("get", "setdefault") and ast.unparse(func.value).endswith("environ")
            if isinstance(name, str) and NAME.fullmatch(name) and (called in ENV_READERS or from_environ):
                default = node.args[1] if len(node.args) > 1 else None
                reads[name] = default.value if isinstance(default, ast.Constant) else None
    return reads


def entrypoint_reads():
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (ROOT / "entrypoint.sh").read_text()))


def test_the_configuration_table_lists_every_setting_the_service_reads_and_no_other():
    documented = first_column(table(section(README, "## Configuration"), "Variable"))
    read = set(environment_reads()) | entrypoint_reads()
    assert read - documented == set(), "read by service/ or entrypoint.sh but not in README's table"
    assert documented - read == set(), "in README's table but read nowhere"


def test_the_configuration_table_gives_the_code_defaults():
    rows = {ticked(row[0])[0]: row[1] for row in table(section(README, "## Configuration"), "Variable")}
    wrong = {}
    for name, default in environment_reads().items():
        if isinstance(default, int | float) and not isinstance(default, bool):
            shown = ticked(rows[name])
            if not shown or float(shown[0]) != default:
                wrong[name] = (rows[name], default)
    assert wrong == {}


def release_keys():
    """RELEASE_KEYS of scripts/lib.sh: the names load_release_env requires."""
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    return re.search(r"readonly RELEASE_KEYS=\(([^)]*)\)", lib).group(1).split()


def test_the_release_file_table_is_the_release_file():
    settings = dict(line.split("=", 1) for line in (ROOT / "stack" / "release.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert sorted(settings) == sorted(release_keys())
    rows = table(section(README, "### The release file"), "Release setting")
    documented = {ticked(row[0])[0]: "" if row[1].strip() == "(empty)" else ticked(row[1])[0] for row in rows}
    assert documented == settings


def test_the_metrics_table_lists_every_metric_with_its_type():
    exposed = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            suffix = "_total" if value._type == "counter" else ""
            exposed[value._name + suffix] = value._type
    rows = table(section(PROTOCOL, "### `GET /metrics`"), "Metric")
    assert {ticked(row[0])[0]: row[1] for row in rows} == exposed


def error_kinds():
    """{kind: side} from docs/protocol.md's table of ws_errors_total kinds."""
    rows = table(section(PROTOCOL, "### `GET /metrics`"), "Kind")
    return {kind: row[1] for row in rows for kind in ticked(row[0])}


def test_the_error_kind_table_is_the_error_enum_with_its_sides():
    kinds = error_kinds()
    assert set(kinds) == {str(kind) for kind in Error}
    assert {kind for kind, side in kinds.items() if side == "server"} == {str(kind) for kind in SERVER_ERRORS}
    assert set(kinds.values()) == {"client", "server"}


def test_operations_and_the_alert_name_exactly_the_server_side_kinds():
    server = {str(kind) for kind in SERVER_ERRORS}
    (rule,) = [row for row in table(section(OPERATIONS, "### Recording rules (`rules.yml`)"), "Rule")
               if "`color:ws_server_errors:rate1m`" in row[0]]
    assert set(ticked(rule[1])) & {str(kind) for kind in Error} == server
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (alert,) = [r for g in groups for r in g["rules"] if r.get("alert") == "WsappServerErrorRatioHigh"]
    listed = re.search(r"Server-side errors \(([^)]*)\)", alert["annotations"]["description"]).group(1)
    assert set(re.split(r",\s*", listed)) == server


def frame_types():
    """(server to client, client to server) frame types, from service/rooms' source."""
    source = "\n".join(path.read_text() for path in (SERVICE / "rooms").glob("*.py"))
    sent = set(re.findall(r'"type":\s*"([a-z_]+)"', source))
    consumers = ast.parse((SERVICE / "rooms" / "consumers.py").read_text())
    received = {node.comparators[0].value for node in ast.walk(consumers)
                if isinstance(node, ast.Compare) and ast.unparse(node.left) == "kind"
                and isinstance(node.comparators[0], ast.Constant)}
    return sent, received


def test_the_frame_lists_are_the_frames_the_code_sends_and_reads():
    sent, received = frame_types()
    assert {"welcome", "message", "reconnect", "ticket"} <= sent and received == {"message", "ping", "renew"}
    frames = section(PROTOCOL, "### Frames")
    assert first_column(table(frames, "Frame")) == received
    assert set(re.findall(r"^\*\*`([a-z_]+)`\*\*:", frames, re.M)) == sent
    brief = section(README, "## Protocol in brief")
    line = re.search(r"^- Server to client: (.*(?:\n  .*)*)", brief, re.M).group(1)
    assert set(ticked(re.sub(r"\([^)]*\)", "", line))) == sent
    line = re.search(r"^- Client to server: (.*)", brief, re.M).group(1)
    assert {re.search(r'"type":"(\w+)"', frame).group(1) for frame in ticked(line)} == received


def sent_close_codes():
    """Close codes the service and its WebSocket layer send (rooms.names, wsserver.protocol)."""
    constants = [(module, name) for module in (rooms_names, wsprotocol) for name in vars(module)
                 if name.startswith("CLOSE_")]
    codes = {getattr(module, name) for module, name in constants}
    codes = {code for code in codes if isinstance(code, int) and 1000 <= code <= 4999}  # not CLOSE_TIMEOUT
    return codes - {rooms_names.CLOSE_ABNORMAL}  # counted, never sent


def test_the_close_code_table_has_every_code_sent_and_no_other_from_the_service():
    rows = table(section(PROTOCOL, "### Close codes"), "Code")
    ours = {int(code) for row in rows if row[1] != "Uvicorn" for code in re.findall(r"\b1\d{3}\b", row[0])}
    assert ours == sent_close_codes()
    brief = re.search(r"^- Close codes: (.*(?:\n  .*)*)", section(README, "## Protocol in brief"), re.M)
    assert {int(code) for code in re.findall(r"\b1\d{3}\b", brief.group(1))} >= sent_close_codes()


def test_the_make_target_table_lists_every_documented_target():
    """Every target `make help` lists (a `##` comment in the Makefile) has a row, and no other."""
    targets = set(re.findall(r"^([a-z0-9-]+):[^#\n]*##", (ROOT / "Makefile").read_text(), re.M))
    rows = table(section(README, "## Make targets"), "Target")
    documented = {name.removeprefix("make ") for name in first_column(rows)} - {"make"}
    assert documented == targets


def test_the_packages_ci_installs_are_the_ones_the_readme_names():
    packages = re.search(r"readonly PACKAGES=\(([^)]*)\)", (ROOT / ".ci" / "run").read_text()).group(1)
    requirements = section(README, "## Requirements")
    named = re.search(r"It installs `([^`]*)`", requirements).group(1)
    assert named.split() == packages.split()


def test_the_release_gate_table_gives_promote_defaults():
    promote = (ROOT / "promote.sh").read_text()
    defaults = dict(re.findall(r"^readonly ([A-Z_]+)=\$\{\1:-([^}]*)\}", promote, re.M))
    rows = table(section(OPERATIONS, "### The release gate"), "Setting")
    assert len(rows) >= 5
    for row in rows:
        (name,) = ticked(row[0])
        shown = ticked(row[1]) or [row[1].split()[0]]
        assert shown[0] == defaults[name], row
