"""The Uvicorn internals wsserver.protocol relies on (wsserver/uvicorn_internals.py) are still there.

Each failure names what changed in the installed Uvicorn or websockets; see the module's docstring
for what to do on an upgrade.
"""

import ast
import hashlib
import importlib
import inspect
import re
import textwrap

import uvicorn
import websockets
from uvicorn.config import Config
from websockets.server import ServerProtocol

from tests.helpers import ROOT
from wsserver import uvicorn_internals as known
from wsserver.protocol import Gate, Inbox, WebSocketProtocol

BASE = getattr(importlib.import_module(known.BASE_MODULE), known.BASE_CLASS)
WHERE = f"{known.BASE_MODULE}.{known.BASE_CLASS} (uvicorn {uvicorn.__version__})"


def base_source_tree():
    return ast.parse(textwrap.dedent(inspect.getsource(BASE)))


def pinned(name):
    with open(f"{ROOT}/requirements.txt") as requirements:
        return re.search(rf"^{name}==(\S+)$", requirements.read(), re.MULTILINE).group(1)


def test_the_list_was_checked_against_the_pinned_versions():
    assert (pinned("uvicorn"), pinned("websockets")) == (known.UVICORN_VERSION, known.WEBSOCKETS_VERSION), (
        "requirements.txt pins other versions than wsserver/uvicorn_internals.py was checked against: "
        "re-read it against the new versions, then update UVICORN_VERSION and WEBSOCKETS_VERSION"
    )
    assert (uvicorn.__version__, websockets.__version__) == (known.UVICORN_VERSION, known.WEBSOCKETS_VERSION)


def test_the_list_names_every_method_the_subclass_defines():
    defined = {name for name, value in vars(WebSocketProtocol).items() if inspect.isfunction(value)}
    listed = set(known.EXTENDED) | set(known.REPLACED) | set(known.ADDED)
    assert defined == listed, (
        f"wsserver/uvicorn_internals.py is out of date: methods not listed {sorted(defined - listed)}, "
        f"listed but not defined {sorted(listed - defined)}"
    )


def test_extended_methods_keep_their_parameters():
    for name, parameters in known.EXTENDED.items():
        method = getattr(BASE, name, None)
        assert method is not None, f"{WHERE} no longer has {name}(), which wsserver.protocol extends"
        actual = tuple(inspect.signature(method).parameters)
        assert actual == parameters, (
            f"{WHERE}.{name} now takes {actual}, wsserver.protocol expects {parameters}"
        )


def test_methods_replaced_whole_are_unchanged():
    for name, digest in known.REPLACED.items():
        source = textwrap.dedent(inspect.getsource(getattr(BASE, name)))
        actual = hashlib.sha256(source.encode()).hexdigest()[:16]
        assert actual == digest, (
            f"{WHERE}.{name} changed; wsserver.protocol replaces it whole: merge the change by hand, "
            f"then set its hash in wsserver/uvicorn_internals.py to {actual}"
        )


def test_uvicorn_does_not_define_what_the_subclass_adds():
    for klass in BASE.__mro__:
        if klass.__module__.startswith("asyncio") or klass is object:
            continue
        for name in known.ADDED:
            assert name not in vars(klass), (
                f"{klass.__module__}.{klass.__name__} now defines {name}(), which wsserver.protocol adds: "
                "Uvicorn may now do this itself; compare, then drop or keep the override"
            )


def test_the_base_class_sets_the_attributes_the_subclass_uses():
    assigned = {
        target.attr
        for node in ast.walk(base_source_tree())
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    }
    missing = sorted(set(known.ATTRIBUTES) - assigned)
    assert not missing, f"{WHERE} no longer sets self.{', self.'.join(missing)}, which wsserver.protocol uses"


def methods_called_on(attribute):
    return {
        node.func.attr
        for node in ast.walk(base_source_tree())
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == attribute
        and isinstance(node.func.value.value, ast.Name) and node.func.value.value.id == "self"
    }


def test_the_queue_and_write_gate_replacements_offer_what_uvicorn_calls():
    for attribute, allowed, replacement in (
        ("queue", known.QUEUE_METHODS, Inbox),
        ("writable", known.WRITABLE_METHODS, Gate),
    ):
        called = methods_called_on(attribute)
        assert called <= set(allowed), (
            f"{WHERE} now calls self.{attribute}.{sorted(called - set(allowed))}; wsserver.protocol "
            f"replaces self.{attribute} with {replacement.__name__}, which must offer them"
        )
        assert all(hasattr(replacement, name) for name in allowed)


def test_config_and_connection_attributes_exist():
    config = Config(app=None)
    for name in known.CONFIG_ATTRIBUTES:
        assert hasattr(config, name), f"uvicorn.config.Config has no {name} any more"
    connection = ServerProtocol()
    for name in known.CONNECTION_ATTRIBUTES:
        assert hasattr(connection, name), f"websockets ServerProtocol has no {name} any more"

