"""The real download code path against a local HTTP server: resume, retries, mirrors, checksums."""

from __future__ import annotations

import hashlib
import os

import pytest

from ilgnet_cli.runtime.download import Checksum, DownloadError, DownloadStats, download

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
SHA = Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest())


def test_resumes_after_connection_drop(server, tmp_path):
    route = server.add("/file.bin", data=PAYLOAD, drop_after=1_000_000, drop_times=1)
    stats = DownloadStats()
    dest = download([server.url("/file.bin")], tmp_path / "file.bin", checksum=SHA, backoff=0, stats=stats)
    assert dest.read_bytes() == PAYLOAD
    assert len(route.requests) == 2
    assert route.requests[0]["range"] is None
    assert route.requests[1]["range"] == f"bytes={stats.resumed_from[0]}-"
    assert 0 < stats.resumed_from[0] <= 1_000_000
    assert not (tmp_path / "file.bin.part").exists()


def test_resumes_part_file_left_by_killed_run(server, tmp_path):
    route = server.add("/file.bin", data=PAYLOAD)
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:777_777])
    stats = DownloadStats()
    download([server.url("/file.bin")], tmp_path / "file.bin", checksum=SHA, stats=stats)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert route.requests[0]["range"] == "bytes=777777-"
    assert stats.resumed_from == [777_777]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.add("/file.bin", data=PAYLOAD, ignore_range=True)
    (tmp_path / "file.bin.part").write_bytes(b"garbage" * 1000)
    download([server.url("/file.bin")], tmp_path / "file.bin", checksum=SHA)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("status", [404, 500, 503])
def test_falls_back_to_mirror(server, tmp_path, status):
    bad = server.add("/primary.bin", status=status)
    server.add("/mirror.bin", data=PAYLOAD)
    stats = DownloadStats()
    download([server.url("/primary.bin"), server.url("/mirror.bin")], tmp_path / "f.bin", checksum=SHA,
             retries=2, backoff=0, stats=stats)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert stats.url == server.url("/mirror.bin")
    # A 404 is permanent (no retry); a 5xx is retried before moving on.
    assert len(bad.requests) == (1 if status == 404 else 3)
    assert str(status) in stats.failures[0]


def test_checksum_mismatch_is_rejected_and_nothing_kept(server, tmp_path):
    server.add("/a.bin", data=PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF]))  # always a different last byte
    server.add("/b.bin", data=b"something else entirely")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download([server.url("/a.bin"), server.url("/b.bin")], tmp_path / "f.bin", checksum=SHA)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_is_rejected(server, tmp_path):
    server.add("/a.bin", data=PAYLOAD)
    with pytest.raises(DownloadError, match="size mismatch"):
        download([server.url("/a.bin")], tmp_path / "f.bin", expected_size=len(PAYLOAD) + 1)


def test_follows_google_drive_confirmation_page(server, tmp_path):
    page = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
    <p>Google Drive can't scan this file for viruses.</p>
    <form id="download-form" action="/download" method="get">
      <input type="submit" id="uc-download-link" value="Download anyway"/>
      <input type="hidden" name="id" value="0B-abc"><input type="hidden" name="export" value="download">
      <input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="1234-&amp;5">
    </form></body></html>"""
    server.add("/uc", html=page)
    dl = server.add("/download", data=PAYLOAD)
    download([server.url("/uc?export=download&id=0B-abc")], tmp_path / "m.caffemodel", checksum=SHA)
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD
    assert dl.requests[0]["path"] == "/download?id=0B-abc&export=download&confirm=t&uuid=1234-%265"


def test_html_error_page_is_not_saved_as_the_file(server, tmp_path):
    server.add("/quota", html="<html><body>Quota exceeded</body></html>")
    with pytest.raises(DownloadError, match="HTML page"):
        download([server.url("/quota")], tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_fails_with_reason(tmp_path):
    with pytest.raises(DownloadError, match="could not download f.bin"):
        download(["http://127.0.0.1:9/nothing"], tmp_path / "f.bin", retries=1, backoff=0, timeout=2)


def test_checksum_parse():
    assert Checksum.parse("SHA1:" + "AB" * 20) == Checksum("sha1", "ab" * 20)
    with pytest.raises(ValueError):
        Checksum.parse("nonsense")
