"""The Python and Dart clients stay in lockstep, and both match the server,
in every way that can be checked without a Dart SDK: error codes and the
classes they map to, frame layout and protocol constants, public classes,
methods and result fields, and a Dart mirror for every Python test of the
client's behaviour.

Naming rule: a Python name in snake_case is the Dart name in lowerCamelCase
(``send_audio`` → ``sendAudio``); a Python test ``test_x_y`` is the Dart
``test('x y', ...)``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path

import polyasr_client
from polyasr_client import (
    HTTP_CODES,
    HTTP_ERRORS,
    WS_ERRORS,
    Dictation,
    DictationResult,
    DictationStats,
    FrameLedger,
    PartialText,
    PolyAsrClient,
    PolyAsrError,
    encode_frame,
    error_from_response,
    framing,
    messages,
)

from polyasr.api.http import ERRORS, INTERNAL
from polyasr.api.openai import error_body
from polyasr.live import refusals
from polyasr.live.basr import wire

REPO = Path(__file__).resolve().parents[2]
DART = REPO / "client" / "dart"
DART_SRC = "\n".join(p.read_text() for p in sorted((DART / "lib" / "src").glob("*.dart")))
MIRRORED = {  # Python test module → the Dart test file that mirrors it
    "test_unit.py": "unit_test.dart",
    "test_scripted.py": "dictation_test.dart",
}
PYTHON_ONLY = {"AudioFileError", "decode_pcm16"}  # file decoding is the CLI's; apps capture PCM
RENAMED = {"aclose": "close", "transport": "httpClient"}  # Dart idioms: release a client, inject one


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def dart_map(name: str, key: str) -> dict[str, str]:
    """``name = {key: Class.new, ...}`` from the Dart sources."""
    body = re.search(rf"\b{name}\s*=\s*\{{(.*?)\}};", DART_SRC, re.S)
    assert body, f"{name} not found in the Dart sources"
    return dict(re.findall(rf"({key}):\s*(\w+)\.new", body.group(1)))


def dart_const(name: str) -> str:
    found = re.search(rf"const\s+[\w<>]+\s+{name}\s*=\s*([^;]+);", DART_SRC)
    assert found, f"const {name} not found in the Dart sources"
    return found.group(1).strip()


def test_error_codes_and_classes_are_the_same_in_dart() -> None:
    assert dart_map("wsErrors", r"'\w+'") == {f"'{code}'": cls.__name__ for code, cls in WS_ERRORS.items()}
    assert dart_map("httpErrors", r"\d+") == {
        str(status): cls.__name__ for status, cls in HTTP_ERRORS.items()
    }
    assert dart_map("httpCodes", r"'\w+'") == {f"'{code}'": cls.__name__ for code, cls in HTTP_CODES.items()}
    for cls in {*WS_ERRORS.values(), *HTTP_ERRORS.values(), *HTTP_CODES.values()}:
        assert re.search(rf"class {cls.__name__} extends {cls.__base__.__name__}\b", DART_SRC), cls
        assert re.search(rf"code: (?:code \?\? )?'{cls.code}'", _dart_class(cls.__name__)), cls


# What the server's middleware answers besides the routes' own failures (ERRORS)
MIDDLEWARE_CODES = {
    (400, "invalid_host"),
    (400, "invalid_request"),
    (401, "unauthorized"),
    (403, "origin_not_allowed"),
    (404, "not_found"),
    (413, "upload_too_large"),
    (422, "invalid_request"),
    (503, "server_shutting_down"),
}


def test_every_http_code_the_server_sends_gets_a_class_of_its_status() -> None:
    """The class comes from the code where it has one, and is then still one
    of its status's class, so a caller may catch either; the code is kept."""
    sent = {*ERRORS.values(), INTERNAL, *MIDDLEWARE_CODES}
    for status, code in sorted(sent):
        error = error_from_response(status, {}, json.dumps(error_body(status, "why", code)))
        assert (error.code, error.status) == (code, status)
        assert isinstance(error, HTTP_ERRORS.get(status, PolyAsrError)), (status, code, type(error))
    statuses = {code: status for status, code in sent}
    for code, cls in HTTP_CODES.items():
        assert code in statuses, f"the server never sends {code}"
        assert issubclass(cls, HTTP_ERRORS[statuses[code]]), cls


def test_every_code_the_server_sends_has_a_class() -> None:
    """The server's codes: its protocol table plus the ones raised in the
    connection handler (unsupported_language, model_unavailable, internal_error)."""
    table = {
        value[0]
        for value in [*vars(wire).values(), *vars(refusals).values()]
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)
    }
    handler = (REPO / "polyasr" / "live" / "basr" / "connection.py").read_text()
    raised = set(re.findall(r'(?:ProtocolError|_fail)\(\s*"(\w+)"', handler))
    assert {"unsupported_language", "model_unavailable", "internal_error"} <= raised
    assert table | raised == set(WS_ERRORS)


def test_frame_layout_matches_the_server_and_dart() -> None:
    for seq, payload in ((0, b""), (7, b"\x01\x02"), (2**40 + 3, bytes(3200))):
        assert encode_frame(seq, payload) == wire.build_frame(seq, payload)
    assert (framing.MAGIC, framing.FRAMING_VERSION, framing.FRAME_TYPE_AUDIO) == (
        wire.MAGIC,
        wire.FRAMING_VERSION,
        wire.FRAME_TYPE_AUDIO,
    )
    magic = [int(b, 16) for b in re.findall(r"0x([0-9a-fA-F]+)", dart_const("basrMagic"))]
    assert bytes(magic) == framing.MAGIC
    for python, dart in (
        ("FRAMING_VERSION", "framingVersion"),
        ("FRAME_TYPE_AUDIO", "frameTypeAudio"),
        ("HEADER_SIZE", "headerSize"),
        ("SAMPLE_RATE", "sampleRate"),
        ("BYTES_PER_SECOND", "bytesPerSecond"),
        ("FRAME_BYTES", "frameBytes"),
    ):
        assert int(dart_const(dart)) == getattr(framing, python), python


def test_protocol_constants_match_dart() -> None:
    assert int(dart_const("protocolVersion")) == messages.PROTOCOL == wire.PROTOCOL
    assert int(dart_const("controlVersion")) == messages.CONTROL
    assert dart_const("defaultUrl") == f"'{messages.DEFAULT_URL}'"
    assert dart_const("wsPath") == f"'{messages.WS_PATH}'"


def test_dart_has_every_public_python_name() -> None:
    dart_types = set(re.findall(r"^(?:abstract interface class|class|typedef|enum)\s+(\w+)", DART_SRC, re.M))
    dart_functions = set(re.findall(r"^[\w<>?,\s{}()]+?\s(\w+)\(", DART_SRC, re.M))
    for name in polyasr_client.__all__:
        if name in PYTHON_ONLY or name.isupper() or name.endswith("_ERRORS"):
            continue
        value = getattr(polyasr_client, name)
        if inspect.isclass(value) or not callable(value) or name[0].isupper():
            assert name in dart_types, f"Dart lacks {name}"
        else:
            assert camel(name) in dart_functions, f"Dart lacks {camel(name)}()"


async def test_classes_have_the_same_methods_and_fields_in_dart() -> None:
    dictation, client = Dictation(), PolyAsrClient()
    await client.aclose()
    instances = {
        Dictation: dictation,
        PolyAsrClient: client,
        FrameLedger: FrameLedger(),
        PartialText: PartialText(),
    }
    for cls, instance in instances.items():
        body = _dart_class(cls.__name__)
        public = {n for n, _ in inspect.getmembers(cls)} | set(vars(instance))
        public |= set(inspect.signature(cls).parameters)
        for name in sorted(n for n in public if not n.startswith("_")):
            dart = RENAMED.get(name, camel(name))
            assert re.search(rf"\b{dart}\b", body), f"{cls.__name__}.{dart} missing in Dart"
    for cls in (DictationResult, DictationStats):
        body = _dart_class(cls.__name__)
        for field in dataclasses.fields(cls):
            assert re.search(rf"\b{camel(field.name)}\b", body), f"{cls.__name__}.{camel(field.name)} missing"


def _dart_class(name: str) -> str:
    """The source of one Dart class: from its header to the next top-level declaration."""
    found = re.search(rf"^class {name}\b.*?(?=^\S)", DART_SRC + "\n\0", re.M | re.S)
    assert found, f"class {name} not found in the Dart sources"
    return found.group(0)


def test_every_python_client_test_has_a_dart_mirror() -> None:
    for module, mirror in MIRRORED.items():
        tree = ast.parse((Path(__file__).parent / module).read_text())
        python = {
            node.name.removeprefix("test_").replace("_", " ")
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        }
        dart = set(re.findall(r"\btest\(\s*'([^']+)'", (DART / "test" / mirror).read_text()))
        assert python, module
        assert python - dart == set(), f"{mirror} lacks mirrors of {module}"
        assert dart - python == set(), f"{mirror} has tests {module} does not"
