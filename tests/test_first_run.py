"""The first run as a photographer meets it: the first download (Google Drive as it is today)
and the message when it cannot happen (no network), for `ilgnet score` and `ilgnet weights fetch`."""

from __future__ import annotations

import hashlib
import os

import pytest
from conftest import camera_photos
from localserver import QUOTA_SUBCAPTION, add_drive, drive_warning_page
from test_weights_cli import entry, write_registry
from typer.testing import CliRunner

from ilgnet_cli import download as dl
from ilgnet_cli.cli import app
from ilgnet_cli.model import store
from ilgnet_cli.runtime.download import Checksum, DownloadError, DownloadStats, download

runner = CliRunner()
PAYLOAD = os.urandom(2 * 1024 * 1024 + 77)
SHA = Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest())
FILE_ID = "0B-wWngvfWr7WekNRX04xSzJEWlE"
REFUSED = "http://127.0.0.1:9/ILGnet-AVA1.caffemodel"  # nothing listens on port 9: like no network


# --------------------------------------------------------------------------- 7: Google Drive today


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


# --------------------------------------------------------------------------- 6: the message without network


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


def test_score_without_network_says_once_per_source_then_lists_three_ways(tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([REFUSED])})
    monkeypatch.setattr(store, "fetch", _fast_fetch(store.fetch))
    result = runner.invoke(app, ["score", "--device", "cpu", str(camera_photos(1)[0])])
    assert result.exit_code == 1
    _check_first_run_message(result.output, "test-ava1", [REFUSED])


def test_weights_fetch_without_network_says_once_per_source_then_lists_three_ways(tmp_path, monkeypatch):
    mirror = "http://127.0.0.1:9/mirror/ILGnet-AVA1.caffemodel"
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([REFUSED, mirror])})
    result = runner.invoke(app, ["weights", "fetch", "test-ava1", "--retries", "1"])
    assert result.exit_code == 1
    _check_first_run_message(result.output, "test-ava1", [REFUSED, mirror])


def test_library_errors_stay_one_line_with_details_apart(tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([REFUSED])})
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
    assert raw.value.sources[0].attempts == 3


def test_offline_first_run_lists_three_ways_on_their_own_lines(monkeypatch):
    monkeypatch.setenv("ILGNET_OFFLINE", "1")
    result = runner.invoke(app, ["score", "--device", "cpu", str(camera_photos(1)[0])])
    assert result.exit_code == 1
    lines = _lines(result.output)
    assert lines[0].startswith("error: no ILGNet weights installed") and len(lines[0]) <= 100
    assert len([line for line in lines if line.lstrip().startswith("ilgnet ")]) == 3


def test_quota_message_reaches_the_photographer(server, tmp_path, monkeypatch):
    add_drive(server, FILE_ID, PAYLOAD, quota=True)
    write_registry(tmp_path, monkeypatch, {"test-ava1": entry([server.url(f"/uc?export=download&id={FILE_ID}")])})
    result = runner.invoke(app, ["weights", "fetch", "test-ava1"])
    assert result.exit_code == 1
    assert QUOTA_SUBCAPTION[:60] in " ".join(result.output.split())


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
