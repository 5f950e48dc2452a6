"""Hostile servers and inputs: every failure is one bounded DownloadError, nothing unverified is installed."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ilgnet_cli import download as dl
from ilgnet_cli.cli import app
from ilgnet_cli.model import store
from ilgnet_cli.runtime.download import Checksum, DownloadError, DownloadStats, download

PAYLOAD = os.urandom(200_000)
SHA = Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest())
runner = CliRunner()


def most_written(calls: list[tuple[int, int | None]]) -> int:
    return max((done for done, _ in calls), default=0)


# --------------------------------------------------------------------------- A: bounds


@pytest.mark.parametrize("length", [None, ""])  # with and without a Content-Length
def test_body_longer_than_expected_size_stops_at_the_size(server, tmp_path, length):
    server.add("/big.bin", data=PAYLOAD, content_length=length)
    seen: list = []
    with pytest.raises(DownloadError, match="longer than"):
        download([server.url("/big.bin")], tmp_path / "f.bin", expected_size=1000, retries=0,
                 progress=lambda d, t: seen.append((d, t)))
    assert most_written(seen) <= 1000
    assert list(tmp_path.iterdir()) == []


def test_unknown_size_is_capped_by_max_bytes(server, tmp_path):
    server.add("/big.bin", data=PAYLOAD, content_length="")
    seen: list = []
    with pytest.raises(DownloadError, match="more than 5000 bytes"):
        download([server.url("/big.bin")], tmp_path / "f.bin", max_bytes=5000, retries=0,
                 progress=lambda d, t: seen.append((d, t)))
    assert most_written(seen) <= 5000
    assert list(tmp_path.iterdir()) == []


def test_per_kind_caps_are_documented_constants():
    assert dl.MAX_METADATA_BYTES < dl.MAX_WEIGHTS_BYTES < dl.MAX_ARCHIVE_BYTES
    assert dl.MAX_WEIGHTS_BYTES == 2 << 30


def test_store_fetch_caps_weights(server, tmp_path, monkeypatch):
    seen = {}

    def spy(urls, dest, **kwargs):
        seen.update(kwargs)
        raise DownloadError("stop here")

    monkeypatch.setattr(store, "download", spy)
    write_registry(tmp_path, monkeypatch, {"w": entry([server.url("/w")])}, default="w")
    with pytest.raises(DownloadError):
        store.fetch("w")
    assert seen["max_bytes"] == dl.MAX_WEIGHTS_BYTES


def test_dripping_server_fails_on_minimum_rate(server, tmp_path):
    server.add("/drip.bin", data=PAYLOAD, drip=0.05)  # 20 bytes/s: would take hours
    start = time.monotonic()
    with pytest.raises(DownloadError, match="too slow"):
        download([server.url("/drip.bin")], tmp_path / "f.bin", retries=0, min_rate=1000, rate_window=0.5)
    assert time.monotonic() - start < 10


def test_dripping_html_page_fails_on_minimum_rate(server, tmp_path):
    server.add("/uc", html="<html>" + "x" * 20_000, drip=0.05)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="too slow"):
        download([server.url("/uc")], tmp_path / "f.bin", retries=0, min_rate=1000, rate_window=0.5)
    assert time.monotonic() - start < 10


def test_deadline_bounds_a_whole_attempt(server, tmp_path):
    server.add("/drip.bin", data=PAYLOAD, drip=0.01)
    with pytest.raises(DownloadError, match="deadline"):
        download([server.url("/drip.bin")], tmp_path / "f.bin", retries=0, min_rate=1, deadline=1.0)


def test_deadline_also_bounds_dripping_headers(server, tmp_path):
    server.add("/f.bin", data=PAYLOAD, drip_headers=0.05)
    start = time.monotonic()
    with pytest.raises(DownloadError):
        download([server.url("/f.bin")], tmp_path / "f.bin", retries=0, deadline=1.0, timeout=5)
    assert time.monotonic() - start < 8


# --------------------------------------------------------------------------- B: resume


def test_206_that_does_not_start_at_the_offset_is_not_appended(server, tmp_path):
    route = server.add("/f.bin", data=PAYLOAD, content_range_start=0)
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert route.requests[-1]["range"] is None  # started over


def test_206_that_stops_short_of_the_end_is_not_complete(server, tmp_path):
    route = server.add("/f.bin", data=PAYLOAD, content_range=f"bytes 1000-1099/{len(PAYLOAD)}", content_length="100")
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    # Not the 1100-byte splice: the part was discarded and fetched again from byte 0.
    assert (tmp_path / "f.bin").read_bytes() != PAYLOAD[:1100]
    assert [r["range"] for r in route.requests] == ["bytes=1000-", None]


def test_truncated_transfer_then_416_is_refetched_not_installed(server, tmp_path):
    route = server.add("/f.bin", data=PAYLOAD, drop_after=1000, drop_times=1, range_status=416)
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert route.requests[-1]["range"] is None


def test_416_with_size_but_no_checksum_is_not_complete(server, tmp_path):
    server.add("/f.bin", data=PAYLOAD, range_status=416)
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_stale_part_of_the_right_size_is_fetched_again(server, tmp_path):
    server.add("/f.bin", data=PAYLOAD)
    (tmp_path / "f.bin.part").write_bytes(b"x" * len(PAYLOAD))
    download([server.url("/f.bin")], tmp_path / "f.bin", checksum=SHA, expected_size=len(PAYLOAD), retries=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_part_that_is_a_directory_is_one_line(server, tmp_path):
    (tmp_path / "f.bin.part").mkdir()
    server.add("/f.bin", data=PAYLOAD)
    with pytest.raises(DownloadError, match="directory"):
        download([server.url("/f.bin")], tmp_path / "f.bin", retries=0)


# --------------------------------------------------------------------------- C: confirmation pages, redirects


def nested_page(path: str) -> str:
    n = int(path.rpartition("n=")[2] or 0) if "n=" in path else 0
    return f'<html><a href="/uc?confirm=t&amp;n={n + 1}">Download anyway</a></html>'


def test_nested_confirmation_pages_are_bounded(server, tmp_path):
    route = server.add("/uc", html_fn=nested_page)
    with pytest.raises(DownloadError, match="confirmation pages"):
        download([server.url("/uc?n=0")], tmp_path / "f.bin", retries=3, backoff=0)
    assert len(route.requests) <= dl.MAX_CONFIRM_HOPS + 1


def test_hostile_confirmation_page_is_parsed_in_bounded_time(server, tmp_path):
    server.add("/uc", html='<form id="download-form" ' * 200_000)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="HTML page"):
        download([server.url("/uc")], tmp_path / "f.bin", retries=0)
    assert time.monotonic() - start < 10


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet='<>="/ formidactnpuvlhreswk-&;', max_size=3000))
def test_confirmation_parser_never_crashes(page):
    start = time.monotonic()
    url = dl._gdrive_confirm_url(page, "http://127.0.0.1/uc")
    assert url is None or url.startswith("http://127.0.0.1")
    assert time.monotonic() - start < 2


def test_confirmation_page_cannot_point_at_a_local_file(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    server.add("/uc", html=f'<a href="file://{secret}?confirm=t">go</a>')
    with pytest.raises(DownloadError):
        download([server.url("/uc")], tmp_path / "out" / "f.bin", retries=0)
    assert not (tmp_path / "out" / "f.bin").exists()


@pytest.mark.parametrize("url", ["file:///etc/hostname", "ftp://127.0.0.1:9/x", "data:,hello"])
def test_only_http_sources(url, server, tmp_path):
    server.add("/f.bin", data=PAYLOAD)
    stats = DownloadStats()
    download([url, server.url("/f.bin")], tmp_path / "f.bin", stats=stats, backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert "http" in stats.failures[0]


@pytest.mark.parametrize("location", ["file:///etc/hostname", "ftp://127.0.0.1:9/x"])
def test_redirect_to_another_scheme_is_refused(server, tmp_path, location):
    route = server.add("/r", status=302, headers={"Location": location})
    with pytest.raises(DownloadError, match="(?i)redirect"):
        download([server.url("/r")], tmp_path / "f.bin", retries=3, backoff=0)
    assert len(route.requests) == 1  # permanent: not retried


def test_redirect_loop_is_permanent(server, tmp_path):
    server.add("/loop", status=302, headers={"Location": "/loop"})
    stats = DownloadStats()
    with pytest.raises(DownloadError):
        download([server.url("/loop")], tmp_path / "f.bin", retries=3, backoff=0, stats=stats)
    assert stats.attempts == 1


@pytest.mark.parametrize("ctype", ["Text/HTML; charset=utf-8", "application/xhtml+xml"])
def test_html_in_any_case_is_not_saved(server, tmp_path, ctype):
    server.add("/f", data=b"<html>login</html>", content_type=ctype)
    with pytest.raises(DownloadError, match="HTML page"):
        download([server.url("/f")], tmp_path / "f.bin", retries=0)


# --------------------------------------------------------------------------- D: part files


def test_planted_part_symlink_is_not_followed(server, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "f.bin.part").symlink_to(victim)
    server.add("/f.bin", data=PAYLOAD)
    download([server.url("/f.bin")], tmp_path / "dl" / "f.bin", checksum=SHA)
    assert victim.read_bytes() == b"precious"
    dest = tmp_path / "dl" / "f.bin"
    assert not dest.is_symlink() and dest.read_bytes() == PAYLOAD


def test_part_that_is_a_fifo_does_not_hang(server, tmp_path):
    os.mkfifo(tmp_path / "f.bin.part")
    server.add("/f.bin", data=PAYLOAD)
    download([server.url("/f.bin")], tmp_path / "f.bin", checksum=SHA)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_downloads_respect_the_umask(server, tmp_path, umask):
    server.add("/f.bin", data=PAYLOAD)
    old = os.umask(umask)
    try:
        download([server.url("/f.bin")], tmp_path / "f.bin")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask


# --------------------------------------------------------------------------- E: the same class elsewhere


@pytest.mark.parametrize("length", ["-5", "abc", "\u00b2", " 12", "99999999"])
def test_lying_content_length_is_a_result_or_one_line_error(server, tmp_path, length):
    server.add("/f.bin", data=PAYLOAD, content_length=length)
    try:
        download([server.url("/f.bin")], tmp_path / "f.bin", checksum=SHA, retries=1, backoff=0)
    except DownloadError as exc:
        assert "\n" not in str(exc)
    else:
        assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_content_length_beyond_expected_size_is_refused_before_reading(server, tmp_path):
    route = server.add("/f.bin", data=PAYLOAD)
    seen: list = []
    with pytest.raises(DownloadError, match="longer than"):
        download([server.url("/f.bin")], tmp_path / "f.bin", expected_size=10, retries=3, backoff=0,
                 progress=lambda d, t: seen.append((d, t)))
    assert seen == [] and len(route.requests) == 1


def test_gzip_content_encoding_is_stored_not_inflated(server, tmp_path):
    bomb = gzip.compress(b"\0" * (20 << 20))
    server.add("/f.gz", data=bomb, headers={"Content-Encoding": "gzip"})
    download([server.url("/f.gz")], tmp_path / "f.gz", max_bytes=1 << 20)
    assert (tmp_path / "f.gz").read_bytes() == bomb


def test_non_200_success_status_is_not_a_file(server, tmp_path):
    server.add("/f.bin", data=b"", body_status=204)
    with pytest.raises(DownloadError, match="HTTP 204"):
        download([server.url("/f.bin")], tmp_path / "f.bin", retries=0)


def test_retry_backoff_is_capped(server, tmp_path, monkeypatch):
    server.add("/f.bin", status=503)
    sleeps: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", sleeps.append)
    with pytest.raises(DownloadError):
        download([server.url("/f.bin")], tmp_path / "f.bin", retries=40, backoff=1.0)
    assert len(sleeps) == 40 and max(sleeps) <= dl.MAX_BACKOFF


@pytest.mark.parametrize("bad", ["nonsense", "http://[::1", "http://127.0.0.1:notaport/x",
                                 "http://127.0.0.1:1/\u00fc", "http://127.0.0.1/a\r\nb", ""])
def test_bad_url_falls_back_to_the_next_mirror(server, tmp_path, bad):
    server.add("/f.bin", data=PAYLOAD)
    download([bad, server.url("/f.bin")], tmp_path / "f.bin", checksum=SHA, backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_https_to_a_plain_server_is_one_line(server, tmp_path):
    server.add("/f.bin", data=PAYLOAD)
    with pytest.raises(DownloadError) as exc:
        download([server.url("/f.bin").replace("http:", "https:")], tmp_path / "f.bin", retries=0)
    assert "\n" not in str(exc.value)


def test_error_message_is_one_short_line(server, tmp_path):
    server.add("/f.bin", status=404)
    long_url = server.url("/f.bin?" + "x" * 5000)
    with pytest.raises(DownloadError) as exc:
        download([long_url], tmp_path / "f.bin", retries=0)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 400


@pytest.mark.parametrize("text", ["shake_128:abcd", "sha256:xyz", "sha256:abc", "md5:" + "g" * 32])
def test_checksum_parse_rejects_unusable_digests(text):
    with pytest.raises(ValueError):
        Checksum.parse(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.one_of(st.none(), st.text(alphabet="0123456789- abx\u00b2", max_size=8)),
       crange=st.one_of(st.none(), st.text(alphabet="bytes 0123456789-/*", max_size=24)),
       resume=st.integers(0, len(PAYLOAD)))
def test_lying_headers_give_the_file_or_one_line_error(server, length, crange, resume):
    server.add("/p.bin", data=PAYLOAD, content_length=length, content_range=crange)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "p.bin"
        if resume:
            dest.with_name("p.bin.part").write_bytes(PAYLOAD[:resume])
        try:
            download([server.url("/p.bin")], dest, checksum=SHA, retries=1, backoff=0, timeout=5)
        except DownloadError as exc:
            assert "\n" not in str(exc)
        else:
            assert dest.read_bytes() == PAYLOAD


# --------------------------------------------------------------------------- store.fetch and the CLI


def write_registry(tmp_path, monkeypatch, entries: dict, default: str = "test-ava1"):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"default": default, "weights": entries}))
    monkeypatch.setenv("ILGNET_REGISTRY", str(path))
    return path


def entry(sources, checksum=None, size=None, file="ILGnet-test.caffemodel"):
    return {"description": "test weights", "kind": "caffemodel", "architecture": "ilgnet", "file": file,
            "sources": sources, "checksum": checksum, "size": size, "mean": "ava1"}


def assert_one_line_failure(result) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error: "), result.output
    # After the one-line error only the documented help block: each source, then the three ways.
    heading = store.ways_to_get_weights()[0]
    assert all(line.startswith("  ") or line == heading for line in lines[1:]), result.output
    assert store.installed_all() == []


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
def test_cli_fetch_fails_with_one_line(server, tmp_path, monkeypatch, how):
    server.add("/w", **HOSTILE[how])
    monkeypatch.setattr(dl, "RATE_WINDOW", 0.5, raising=False)
    monkeypatch.setattr(dl, "MIN_RATE", 1000, raising=False)
    size = 1000 if how == "longer-body" else None
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([server.url("/w")], size=size)})
    result = runner.invoke(app, ["weights", "fetch", "test-ava1", "--retries", "0"])
    assert_one_line_failure(result)
    assert not any(p.is_file() and p.suffix != ".part" for p in store.home().rglob("*"))


def test_cli_fetch_bad_url_is_one_line(tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry(["not a url"])})
    assert_one_line_failure(runner.invoke(app, ["weights", "fetch", "test-ava1", "--retries", "0"]))


@pytest.mark.parametrize("field,value", [("file", "../../outside.caffemodel"), ("file", ".hidden"),
                                         ("file", "a/b.caffemodel"), ("sources", "http://127.0.0.1:9/x"),
                                         ("sources", [1]),
                                         ("size", -1), ("size", "12"), ("checksum", "shake_128:00")])
def test_cli_fetch_rejects_hostile_registry_fields(server, tmp_path, monkeypatch, field, value):
    server.add("/x", data=b"junk")
    victim = store.home().parent / "outside.caffemodel"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"keep me")
    spec = entry([server.url("/x")])
    spec[field] = value
    write_registry(tmp_path, monkeypatch, {"test-ava1": spec})
    result = runner.invoke(app, ["weights", "fetch", "test-ava1", "--retries", "0"])
    assert_one_line_failure(result)
    assert victim.read_bytes() == b"keep me"


@pytest.mark.slow
def test_unparseable_download_falls_back_to_the_next_mirror(server, tmp_path, monkeypatch, caffemodels):
    server.add("/bad.caffemodel", data=b"<html>not a model</html>")
    server.add("/good.caffemodel", file=caffemodels["v2"])
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([server.url("/bad.caffemodel"),
                                                               server.url("/good.caffemodel")])})
    result = runner.invoke(app, ["weights", "fetch", "test-ava1", "--retries", "0"])
    assert result.exit_code == 0, result.output
    rec = store.installed("test-ava1")
    assert rec is not None and rec.source.endswith("/good.caffemodel")
    assert not any((store.home() / "downloads").iterdir())


def test_unparseable_download_installs_nothing(server, tmp_path, monkeypatch):
    server.add("/bad.caffemodel", data=b"\x0a\x05hello" * 100)
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([server.url("/bad.caffemodel")])})
    assert_one_line_failure(runner.invoke(app, ["weights", "fetch", "test-ava1", "--retries", "0"]))
    assert not any(p.is_file() for p in store.home().rglob("*"))
