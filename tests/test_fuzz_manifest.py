"""Property: loading any JSON as a manifest gives a Manifest or one AVADownloadError line, quickly;
and a loaded manifest never plans a download or target outside DEST."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilgnet_cli.ava.download import AVADownloadError, Manifest, plan_files

VALID = {
    "name": "local", "description": "d", "verified": True, "note": "n",
    "files": [
        {"name": "AVA.txt", "urls": ["http://127.0.0.1:1/AVA.txt"], "target": "AVA.txt"},
        {"name": "AVA.zip", "urls": ["https://example.org/AVA.zip"], "size": 10,
         "checksum": "sha256:" + "0" * 64, "archive": "zip"},
        {"name": "generic_test.jpgl", "urls": ["http://a/g"], "target": "aesthetics_image_lists/generic_test.jpgl"},
    ],
    "images": {"urls": ["http://a/{id}.jpg", "http://b/{id:06d}.jpg"], "checksums": {"1": "a" * 64}},
}

# Strings biased towards the characters that matter here: path separators, dots, braces, NULs.
tricky = st.lists(st.sampled_from(list("./\\{}:%0 id\x00ab1\uff11") + ["..", "{id}", "http://"]),
                  max_size=12).map("".join)
scalars = st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True) | tricky | st.text(
    max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10) | st.sampled_from(sorted(VALID) + ["urls", "target"]),
                                             inner, max_size=4), max_leaves=20)


def _paths(value, prefix=()):
    """Every (path, leaf) in a JSON value, so a mutation can replace any node."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replace(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


NODES = [p for p, _ in _paths(VALID)]


@st.composite
def mutated(draw):
    spec = VALID
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(NODES))
        try:
            spec = _replace(spec, path, draw(json_values))
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed the node
            pass
    return spec


def _check(raw, folder: Path) -> None:
    path = folder / "m.json"
    path.write_text(json.dumps(raw, allow_nan=True))
    start = time.monotonic()
    try:
        m = Manifest.load(path)
    except AVADownloadError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    finally:
        assert time.monotonic() - start < 2.0
    assert isinstance(m, Manifest)
    dest = folder / "AVA"
    try:
        plan = plan_files(m, dest)
    except AVADownloadError as exc:  # e.g. a name that resolves to DEST/.downloads itself
        assert "\n" not in str(exc)
        return
    for _, download_to, target in plan:
        assert download_to.parent == (dest / ".downloads").resolve()
        assert target.is_relative_to(dest.resolve()) and target != dest.resolve()
    if m.images:
        for template in m.images["urls"]:
            assert len(template.format(id=123456)) < 10_000


def test_valid_manifest_loads():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.json"
        path.write_text(json.dumps(VALID))
        assert len(Manifest.load(path).files) == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_is_a_manifest_or_one_line_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        _check(raw, Path(tmp))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_valid_manifest_is_a_manifest_or_one_line_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        _check(raw, Path(tmp))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_manifest_or_one_line_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.json"
        path.write_bytes(data)
        try:
            Manifest.load(path)
        except AVADownloadError as exc:
            assert "\n" not in str(exc)
