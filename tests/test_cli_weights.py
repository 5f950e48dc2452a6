"""``ilgnet weights`` and the first run as a photographer meets it: the message when weights
cannot be had (no network, offline, Google's quota), once per source and then the three ways to
get them; hostile servers and registries ending in one line with nothing installed; the
default weights."""

from __future__ import annotations

import hashlib
import os

import pytest
from helpers import assert_one_line_failure, one_line
from localserver import QUOTA_SUBCAPTION, add_drive, nested_page

from ilgnet_cli.model import store
from ilgnet_cli.runtime import download as dl
from ilgnet_cli.runtime.download import Checksum, DownloadError, download

PAYLOAD = os.urandom(200_000)
SHA = Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest())
FILE_ID = "0B-wWngvfWr7WekNRX04xSzJEWlE"
REFUSED = "http://127.0.0.1:9/ILGnet-AVA1.caffemodel"  # nothing listens on port 9: like no network


def _fast_fetch(fetch):
    def wrapper(name, **kwargs):
        return fetch(name, **{**kwargs, "retries": 1, "backoff": 0})
    return wrapper


def _lines(output: str) -> list[str]:
    return [line.rstrip() for line in output.splitlines() if line.strip()]


def _check_first_run_message(output: str, name: str, sources: list[str]) -> None:
    lines = _lines(output)
    assert lines[0].startswith(f"error: could not download {name}: "), lines
    assert len(lines[0]) <= 100, lines[0]
    for url in sources:  # each source and what failed, once
        assert output.count(url) == 1, output
    assert sum("Connection refused" in line or "refused" in line for line in lines) == len(sources), output
    assert max(len(line) for line in lines) <= 110, output
    ways = [line for line in lines if line.lstrip().startswith("ilgnet ")]
    assert len(ways) == 3, output
    assert any("ilgnet weights fetch" in w for w in ways) and any("ilgnet weights import" in w for w in ways)
    assert any("ilgnet train" in w for w in ways)


def test_score_without_network_says_once_per_source_then_lists_three_ways(tmp_path, monkeypatch, cli, registry, camera):
    registry({"test-ava1": registry.entry([REFUSED])})
    monkeypatch.setattr(store, "fetch", _fast_fetch(store.fetch))
    result = cli("score", "--device", "cpu", camera(1)[0])
    assert result.code == 1
    _check_first_run_message(result.output, "test-ava1", [REFUSED])


def test_weights_fetch_without_network_says_once_per_source_then_lists_three_ways(tmp_path, monkeypatch, cli, registry):
    mirror = "http://127.0.0.1:9/mirror/ILGnet-AVA1.caffemodel"
    registry({"test-ava1": registry.entry([REFUSED, mirror])})
    result = cli("weights", "fetch", "test-ava1", "--retries", "1")
    assert result.code == 1
    _check_first_run_message(result.output, "test-ava1", [REFUSED, mirror])


def test_library_errors_stay_one_line_with_details_apart(tmp_path, monkeypatch, registry):
    registry({"test-ava1": registry.entry([REFUSED])})
    with pytest.raises(store.NoWeightsError) as info:
        store.fetch("test-ava1", retries=0, backoff=0)
    assert "\n" not in str(info.value) and str(info.value).startswith("could not download test-ava1: ")
    assert any(REFUSED in line for line in info.value.details)
    assert not any("--offline" in line for line in info.value.details)
    with pytest.raises(DownloadError) as raw:
        download([REFUSED, REFUSED + "?2"], tmp_path / "x.bin", retries=2, backoff=0)
    text = str(raw.value)
    assert "\n" not in text and text.count(REFUSED) == 2  # once per source, however many attempts
    assert [s.url for s in raw.value.sources] == [REFUSED, REFUSED + "?2"]
    assert raw.value.sources[0].attempts == 2  # an unreachable host gets one retry, not all of them


def test_offline_first_run_lists_three_ways_on_their_own_lines(monkeypatch, cli, camera):
    monkeypatch.setenv("ILGNET_OFFLINE", "1")
    result = cli("score", "--device", "cpu", camera(1)[0])
    assert result.code == 1
    lines = _lines(result.output)
    assert lines[0].startswith("error: ilgnet-ava1 is not installed and downloads are off") and len(lines[0]) <= 100
    assert len([line for line in lines if line.lstrip().startswith("ilgnet ")]) == 3


def test_quota_message_reaches_the_photographer(server, tmp_path, monkeypatch, cli, registry):
    add_drive(server, FILE_ID, PAYLOAD, quota=True)
    registry({"test-ava1": registry.entry([server.url(f"/uc?export=download&id={FILE_ID}")])})
    result = cli("weights", "fetch", "test-ava1")
    assert result.code == 1
    assert QUOTA_SUBCAPTION[:60] in " ".join(result.output.split())


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_without_weights_names_the_three_ways(monkeypatch, how, cli, camera):
    args = ["score", "--device", "cpu", camera(1)[0]]
    if how == "flag":
        args.insert(1, "--offline")
    else:
        monkeypatch.setenv("ILGNET_OFFLINE", "1")
    result = cli(*args)
    assert result.code == 1
    text = " ".join(result.output.split())
    for way in ("ilgnet weights fetch", "ilgnet weights import", "ilgnet train"):
        assert way in text


def test_unreachable_default_weights_names_the_three_ways(tmp_path, monkeypatch, cli, registry, camera):
    registry({"test-ava1": registry.entry(["http://127.0.0.1:9/ILGnet.caffemodel"])})
    monkeypatch.setattr(store, "fetch", _fast_fetch(store.fetch))
    result = cli("score", "--device", "cpu", camera(1)[0])
    assert result.code == 1
    text = " ".join(result.output.split())
    assert "could not download test-ava1" in text and "ilgnet weights import" in text


# --------------------------------------------------------------------------- hostile servers and registries




HOSTILE = {
    "longer-body": dict(data=PAYLOAD),  # registry says 1000 bytes
    "nested-confirm": dict(html_fn=nested_page),
    "redirect-file": dict(status=302, headers={"Location": "file:///etc/hostname"}),
    "html": dict(html="<html>quota</html>"),
    "drip": dict(data=PAYLOAD, drip=0.05),
    "garbage-caffemodel": dict(data=b"\x0a\xff\xff\xff\xff\x0f" + b"\0" * 1000),
    "bad-length": dict(data=PAYLOAD, content_length="\u00b2"),
    "no-content": dict(data=b"", body_status=204),
}


@pytest.mark.parametrize("how", sorted(HOSTILE))
def test_cli_fetch_fails_with_one_line(server, tmp_path, monkeypatch, how, cli, registry):
    server.add("/w", **HOSTILE[how])
    monkeypatch.setattr(dl, "RATE_WINDOW", 0.5, raising=False)
    monkeypatch.setattr(dl, "MIN_RATE", 1000, raising=False)
    size = 1000 if how == "longer-body" else None
    registry({"test-ava1": registry.entry([server.url("/w")], size=size)})
    result = cli("weights", "fetch", "test-ava1", "--retries", "0")
    assert_one_line_failure(result)
    assert not any(p.is_file() and p.suffix != ".part" for p in store.home().rglob("*"))


def test_cli_fetch_bad_url_is_one_line(tmp_path, monkeypatch, cli, registry):
    registry({"test-ava1": registry.entry(["not a url"])})
    assert_one_line_failure(cli("weights", "fetch", "test-ava1", "--retries", "0"))


@pytest.mark.parametrize("field,value", [("file", "../../outside.caffemodel"), ("file", ".hidden"),
                                         ("file", "a/b.caffemodel"), ("sources", "http://127.0.0.1:9/x"),
                                         ("sources", [1]),
                                         ("size", -1), ("size", "12"), ("checksum", "shake_128:00")])
def test_cli_fetch_rejects_hostile_registry_fields(server, tmp_path, monkeypatch, field, value, cli, registry):
    server.add("/x", data=b"junk")
    victim = store.home().parent / "outside.caffemodel"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"keep me")
    spec = registry.entry([server.url("/x")])
    spec[field] = value
    registry({"test-ava1": spec})
    result = cli("weights", "fetch", "test-ava1", "--retries", "0")
    assert_one_line_failure(result)
    assert victim.read_bytes() == b"keep me"


# --------------------------------------------------------------------------- the default weights


def test_weights_default_shows_and_sets_the_weights_used_when_none_are_named(registry, cli, tiny):
    from ilgnet_cli.model.provenance import UNKNOWN

    registry({"test-ava1": registry.entry([REFUSED])})
    shown = cli("weights", "default")
    assert shown.code == 0
    assert shown.stdout.strip() == "default weights: test-ava1 (not installed yet (fetched on first use))"
    store.install_taste("mine", tiny, [0.0] * 1024, 0.0, metadata={}, provenance=UNKNOWN)
    assert cli("weights", "default", "mine").stdout.strip() == "default weights: mine (installed)"
    assert store.default_name() == "mine"
    refused = cli("weights", "default", "absent")
    assert refused.code == 1
    one_line(refused.stderr, "neither installed nor known")
    assert store.default_name() == "mine"
