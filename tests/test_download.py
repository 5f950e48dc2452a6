"""The download code path against a local HTTP server (no real network anywhere): resume,
retries, mirrors, checksums; hostile servers (every failure one bounded DownloadError, nothing
unverified kept); Google Drive's pages as they are today."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localserver import add_drive, drive_warning_page, nested_page

from ilgnet_cli.runtime import download as dl
from ilgnet_cli.runtime.download import Checksum, DownloadError, DownloadStats, download

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
SHA = Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest())
SMALL = os.urandom(200_000)
SMALL_SHA = Checksum("sha256", hashlib.sha256(SMALL).hexdigest())
FILE_ID = "0B-wWngvfWr7WekNRX04xSzJEWlE"
REFUSED = "http://127.0.0.1:9/ILGnet-AVA1.caffemodel"  # nothing listens on port 9: like no network


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


# --------------------------------------------------------------------------- hostile servers and inputs


def most_written(calls: list[tuple[int, int | None]]) -> int:
    return max((done for done, _ in calls), default=0)


# --------------------------------------------------------------------------- A: bounds


@pytest.mark.parametrize(("length", "cap", "match"), [
    (None, {"expected_size": 1000}, "longer than"),  # a body longer than the expected size ...
    ("", {"expected_size": 1000}, "longer than"),  # ... with and without a Content-Length
    ("", {"max_bytes": 5000}, "more than 5000 bytes"),  # an unknown size is capped by max_bytes
])
def test_a_body_stops_at_its_size_or_cap(server, tmp_path, length, cap, match):
    server.add("/big.bin", data=SMALL, content_length=length)
    seen: list = []
    with pytest.raises(DownloadError, match=match):
        download([server.url("/big.bin")], tmp_path / "f.bin", retries=0, progress=lambda d, t: seen.append((d, t)),
                 **cap)
    assert most_written(seen) <= next(iter(cap.values()))
    assert list(tmp_path.iterdir()) == []


def test_per_kind_caps_are_documented_constants():
    assert dl.MAX_METADATA_BYTES < dl.MAX_WEIGHTS_BYTES < dl.MAX_ARCHIVE_BYTES
    assert dl.MAX_WEIGHTS_BYTES == 2 << 30


def test_dripping_server_fails_on_minimum_rate(server, tmp_path):
    server.add("/drip.bin", data=SMALL, drip=0.05)  # 20 bytes/s: would take hours
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
    server.add("/drip.bin", data=SMALL, drip=0.01)
    with pytest.raises(DownloadError, match="deadline"):
        download([server.url("/drip.bin")], tmp_path / "f.bin", retries=0, min_rate=1, deadline=1.0)


def test_deadline_also_bounds_dripping_headers(server, tmp_path):
    server.add("/f.bin", data=SMALL, drip_headers=0.05)
    start = time.monotonic()
    with pytest.raises(DownloadError):
        download([server.url("/f.bin")], tmp_path / "f.bin", retries=0, deadline=1.0, timeout=5)
    assert time.monotonic() - start < 8


# --------------------------------------------------------------------------- B: resume


def test_206_that_does_not_start_at_the_offset_is_not_appended(server, tmp_path):
    route = server.add("/f.bin", data=SMALL, content_range_start=0)
    (tmp_path / "f.bin.part").write_bytes(SMALL[:1000])
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == SMALL
    assert route.requests[-1]["range"] is None  # started over


def test_206_that_stops_short_of_the_end_is_not_complete(server, tmp_path):
    route = server.add("/f.bin", data=SMALL, content_range=f"bytes 1000-1099/{len(SMALL)}", content_length="100")
    (tmp_path / "f.bin.part").write_bytes(SMALL[:1000])
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    # Not the 1100-byte splice: the part was discarded and fetched again from byte 0.
    assert (tmp_path / "f.bin").read_bytes() != SMALL[:1100]
    assert [r["range"] for r in route.requests] == ["bytes=1000-", None]


def test_truncated_transfer_then_416_is_refetched_not_installed(server, tmp_path):
    route = server.add("/f.bin", data=SMALL, drop_after=1000, drop_times=1, range_status=416)
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == SMALL
    assert route.requests[-1]["range"] is None


def test_416_with_size_but_no_checksum_is_not_complete(server, tmp_path):
    server.add("/f.bin", data=SMALL, range_status=416)
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)
    download([server.url("/f.bin")], tmp_path / "f.bin", backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == SMALL


def test_stale_part_of_the_right_size_is_fetched_again(server, tmp_path):
    server.add("/f.bin", data=SMALL)
    (tmp_path / "f.bin.part").write_bytes(b"x" * len(SMALL))
    download([server.url("/f.bin")], tmp_path / "f.bin", checksum=SMALL_SHA, expected_size=len(SMALL), retries=0)
    assert (tmp_path / "f.bin").read_bytes() == SMALL


def test_part_that_is_a_directory_is_one_line(server, tmp_path):
    (tmp_path / "f.bin.part").mkdir()
    server.add("/f.bin", data=SMALL)
    with pytest.raises(DownloadError, match="directory"):
        download([server.url("/f.bin")], tmp_path / "f.bin", retries=0)


# --------------------------------------------------------------------------- C: confirmation pages, redirects


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
    server.add("/f.bin", data=SMALL)
    stats = DownloadStats()
    download([url, server.url("/f.bin")], tmp_path / "f.bin", stats=stats, backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == SMALL
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
    server.add("/f.bin", data=SMALL)
    download([server.url("/f.bin")], tmp_path / "dl" / "f.bin", checksum=SMALL_SHA)
    assert victim.read_bytes() == b"precious"
    dest = tmp_path / "dl" / "f.bin"
    assert not dest.is_symlink() and dest.read_bytes() == SMALL


def test_part_that_is_a_fifo_does_not_hang(server, tmp_path):
    os.mkfifo(tmp_path / "f.bin.part")
    server.add("/f.bin", data=SMALL)
    download([server.url("/f.bin")], tmp_path / "f.bin", checksum=SMALL_SHA)
    assert (tmp_path / "f.bin").read_bytes() == SMALL


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_downloads_respect_the_umask(server, tmp_path, umask):
    server.add("/f.bin", data=SMALL)
    old = os.umask(umask)
    try:
        download([server.url("/f.bin")], tmp_path / "f.bin")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask


# --------------------------------------------------------------------------- E: the same class elsewhere


@pytest.mark.parametrize("length", ["-5", "abc", "\u00b2", " 12", "99999999"])
def test_lying_content_length_is_a_result_or_one_line_error(server, tmp_path, length):
    server.add("/f.bin", data=SMALL, content_length=length)
    try:
        download([server.url("/f.bin")], tmp_path / "f.bin", checksum=SMALL_SHA, retries=1, backoff=0)
    except DownloadError as exc:
        assert "\n" not in str(exc)
    else:
        assert (tmp_path / "f.bin").read_bytes() == SMALL


def test_content_length_beyond_expected_size_is_refused_before_reading(server, tmp_path):
    route = server.add("/f.bin", data=SMALL)
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
    server.add("/f.bin", data=SMALL)
    download([bad, server.url("/f.bin")], tmp_path / "f.bin", checksum=SMALL_SHA, backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == SMALL


def test_https_to_a_plain_server_is_one_line(server, tmp_path):
    server.add("/f.bin", data=SMALL)
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
       resume=st.integers(0, len(SMALL)))
def test_lying_headers_give_the_file_or_one_line_error(server, length, crange, resume):
    server.add("/p.bin", data=SMALL, content_length=length, content_range=crange)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "p.bin"
        if resume:
            dest.with_name("p.bin.part").write_bytes(SMALL[:resume])
        try:
            download([server.url("/p.bin")], dest, checksum=SMALL_SHA, retries=1, backoff=0, timeout=5)
        except DownloadError as exc:
            assert "\n" not in str(exc)
        else:
            assert dest.read_bytes() == SMALL


# --------------------------------------------------------------------------- Google Drive as it is today


def test_drive_redirect_warning_form_and_cookie_round_trip(server, tmp_path):
    drive = add_drive(server, FILE_ID, PAYLOAD)
    stats = DownloadStats()
    dest = download([server.url(f"/uc?export=download&id={FILE_ID}")], tmp_path / "m.caffemodel", checksum=SHA,
                    stats=stats, retries=0)
    assert dest.read_bytes() == PAYLOAD
    confirmed = [r for r in server.routes["/download"].requests if "confirm=" in r["path"]]
    assert len(confirmed) == 1 and drive.cookie in (confirmed[0]["cookie"] or "")
    assert f"id={FILE_ID}" in confirmed[0]["path"] and f"uuid={drive.uuid}" in confirmed[0]["path"]
    assert drive.warnings_served == 1


def test_drive_download_resumes_through_the_warning_page(server, tmp_path):
    drive = add_drive(server, FILE_ID, PAYLOAD)
    drive.data_route.drop_after, drive.data_route.drop_times = 700_000, 1
    stats = DownloadStats()
    download([server.url(f"/uc?export=download&id={FILE_ID}")], tmp_path / "m.caffemodel", checksum=SHA,
             stats=stats, backoff=0)
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD
    assert stats.resumed_from and drive.data_route.requests[-1]["range"] == f"bytes={stats.resumed_from[0]}-"


def test_drive_quota_page_is_a_one_line_error_not_retried(server, tmp_path):
    drive = add_drive(server, FILE_ID, PAYLOAD, quota=True)
    with pytest.raises(DownloadError) as info:
        download([server.url(f"/uc?export=download&id={FILE_ID}")], tmp_path / "f.bin", retries=3, backoff=0)
    text = str(info.value)
    assert "\n" not in text and "Too many users have viewed or downloaded this file recently" in text
    assert len(text) < 300
    assert len(server.routes["/download"].requests) == 1  # a quota lasts hours: the next source, not a retry
    assert drive.warnings_served == 0 and list(tmp_path.iterdir()) == []


def test_drive_warning_page_that_never_lets_go_names_it(server, tmp_path):
    add_drive(server, FILE_ID, PAYLOAD)
    # The confirmed request gets the same warning again (Drive changed something): no endless loop.
    server.add("/download", html=drive_warning_page(server.url("/download"), FILE_ID, "stale"))
    with pytest.raises(DownloadError, match="virus scan warning") as info:
        download([server.url(f"/uc?export=download&id={FILE_ID}")], tmp_path / "f.bin", retries=0)
    assert "\n" not in str(info.value)


def test_form_action_query_and_hidden_inputs_merge():
    page = ('<form id="download-form" action="https://drive.usercontent.google.com/download?id=X&amp;export=download"'
            ' method="get"><input type="submit" name="go" value="Download anyway">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1">'
            '<input type="hidden" name="id" value="X"></form>')
    url = dl._gdrive_confirm_url(page, "https://drive.usercontent.google.com/download?id=X&export=download")
    assert url == "https://drive.usercontent.google.com/download?id=X&export=download&confirm=t&uuid=u-1"


def test_download_url_in_page_script_is_followed():
    page = '<script>var x = {"downloadUrl":"https://drive.usercontent.google.com/download?id\\u003dX\\u0026confirm\\u003dt"}'
    url = dl._gdrive_confirm_url(page, "https://drive.google.com/uc?id=X")
    assert url == "https://drive.usercontent.google.com/download?id=X&confirm=t"


@pytest.mark.parametrize("link", [
    "https://drive.google.com/file/d/0B-abc_DEF/view?usp=sharing",
    "https://drive.google.com/file/d/0B-abc_DEF/view",
    "https://drive.google.com/open?id=0B-abc_DEF",
    "https://drive.google.com/uc?id=0B-abc_DEF",
])
def test_drive_share_links_become_download_links(link):
    assert dl.drive_download_url(link) == "https://drive.google.com/uc?export=download&id=0B-abc_DEF"


@pytest.mark.parametrize("url", [
    "https://drive.google.com/uc?export=download&id=0B-abc",
    "https://example.org/file/d/0B-abc/view",
    "http://127.0.0.1:8000/uc?id=1",
])
def test_other_links_are_left_alone(url):
    assert dl.drive_download_url(url) == url


@pytest.mark.parametrize("page", [
    '<p class="uc-error-subcaption">' + "x<" * 40_000,
    '"downloadUrl":"' + "\\" * 60_000,
    '"downloadUrl":"' * 5_000,
    "<title>" + "Quota exceeded " * 5_000,
])
def test_drive_page_parsing_stays_linear_on_hostile_pages(page):
    import time

    start = time.monotonic()
    problem = dl._drive_page_error(page, "http://127.0.0.1/download")
    assert problem is None or ("\n" not in problem and len(problem) < 200)
    url = dl._gdrive_confirm_url(page, "http://127.0.0.1/uc")
    assert url is None or url.startswith("http://127.0.0.1")
    assert time.monotonic() - start < 2


def test_error_subcaption_with_markup_is_one_clean_line():
    page = ('<p class="uc-error-subcaption">Too many users have viewed this file.<br>Try again'
            ' <a href="/x">later</a> &amp; soon.\n</p>')
    assert dl._drive_page_error(page, "https://drive.usercontent.google.com/download") == (
        "Google Drive: Too many users have viewed this file. Try again later & soon.")
    assert "sign in" in dl._drive_page_error("<html></html>", "https://accounts.google.com/ServiceLogin?x=1")
