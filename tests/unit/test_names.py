"""Names defined once: the error kinds the code emits, the server-side ones the alerts count."""

import ast
import re
from pathlib import Path

import yaml

from rooms.names import SERVER_ERRORS, Error
from tests.helpers import ROOT

SERVICE = Path(ROOT) / "service"
RULES = Path(ROOT) / "observability/prometheus/rules.yml"


def emitted_kinds():
    """Every first argument of ERRORS.labels(...) and self.error(...) in service/, as source text."""
    kinds = []
    for path in SERVICE.rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            params = {arg.arg for arg in function.args.args}
            for node in ast.walk(function):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                    continue
                func, kind = node.func, node.args[0]
                errors_labels = func.attr == "labels" and ast.unparse(func.value).endswith("ERRORS")
                error_frame = func.attr == "error" and ast.unparse(func.value) == "self"
                passed_through = isinstance(kind, ast.Name) and kind.id in params  # def error(self, code, ..)
                if (errors_labels or error_frame) and not passed_through:
                    kinds.append((path.name, ast.unparse(kind)))
    return kinds


def test_every_emitted_error_kind_is_a_member_of_error():
    kinds = emitted_kinds()
    assert kinds, "found no ERRORS.labels(...) or self.error(...) calls"
    literal = [(name, kind) for name, kind in kinds if not re.fullmatch(r"Error\.[A-Z_]+", kind)]
    assert not literal, f"error kinds must be rooms.names.Error members: {literal}"


def test_every_error_kind_is_emitted_somewhere():
    emitted = {kind.removeprefix("Error.") for _, kind in emitted_kinds()}
    assert emitted == {member.name for member in Error}


def test_the_server_error_rule_counts_exactly_the_server_side_kinds():
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]
             if rule.get("record") == "color:ws_server_errors:rate1m"]
    assert len(exprs) == 1
    regex = re.search(r'ws_errors_total\{kind=~"([^"]+)"\}', exprs[0]).group(1)
    assert set(regex.split("|")) == {str(kind) for kind in SERVER_ERRORS}
