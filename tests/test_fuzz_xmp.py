"""Property: whatever an existing sidecar holds, ``plan_and_write`` either merges it (the result
parses, with our rating in it) or skips it with a one-line XmpError, leaving it byte for byte;
never a traceback, a hang or a memory blow-up."""

from __future__ import annotations

import tempfile
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ilgnet_cli.photos.xmp import XmpError, _decode, plan_and_write

RATING = "{http://ns.adobe.com/xap/1.0/}Rating"
VALID = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="{rating}">
   <!-- a comment --><dc:subject><rdf:Bag><rdf:li>caf\u00e9</rdf:li></rdf:Bag></dc:subject>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">t</rdf:li></rdf:Alt></dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""
CODECS = [("", "utf-8"), ("\ufeff", "utf-8"), ("\ufeff", "utf-16-le"), ("", "utf-16-be"), ("\ufeff", "utf-32-be"),
          ("", "utf-32-le")]
RATINGS = st.sampled_from(["0", "1", "3", "5", "-1", "3.5", "abc", "99", "-5", "", " 2 ", "nan", "1e9", "[/b]"])
TAG = st.sampled_from(["rdf:Bag", "rdf:li", "a", "x:xmpmeta", "rdf:Description", "xmp:Rating", "b:c"])


@st.composite
def mutated(draw) -> bytes:
    bom, codec = draw(st.sampled_from(CODECS))
    data = bytearray((bom + VALID.replace("{rating}", draw(RATINGS))).encode(codec))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if op == "flip" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"<", b">", b"&", b"]]>", b"<!--", b"<?", b"<!DOCTYPE x>", b"&#1;", b"\x00", b"\"", b"\xff\xfe"]))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 40))]
        elif op == "dup":
            j = draw(st.integers(i, min(len(data), i + 200)))
            data[i:i] = data[i:j]
    return bytes(data)


@st.composite
def xmlish(draw) -> bytes:
    pieces = st.sampled_from(["<", ">", "</", "/>", "=", '"', "'", " ", "\n", "x:xmpmeta", "rdf:RDF",
                              "rdf:Description", "xmp:Rating", 'xmlns:x="adobe:ns:meta/"',
                              'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"',
                              'xmlns:xmp="http://ns.adobe.com/xap/1.0/"', 'xmlns:xml="urn:x"', "<!--", "-->",
                              "<?xpacket end='w'?>", "<?xml version='1.0' encoding='latin-1'?>", "&amp;", "&x;",
                              "<![CDATA[", "]]>", "\u00e9", "\ud7ff", "\U0001f600", "\x01"]) | st.text(max_size=5)
    text = "".join(draw(st.lists(pieces, max_size=60)))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-16-le", "latin-1"])), "replace")


@st.composite
def deep(draw) -> bytes:
    tag, depth = draw(TAG), draw(st.integers(1, 3000))
    inner = f"<{tag}>" * depth + f"</{tag}>" * draw(st.sampled_from([depth, depth - 1, 0]))
    return VALID.replace("{rating}", "0").replace("<dc:subject>", inner + "<dc:subject>").encode()


@st.composite
def huge_attribute(draw) -> bytes:
    value = draw(st.sampled_from(["a", "&amp;", "\u00e9", "<", ">", "\""])) * draw(st.integers(1, 300_000))
    where = draw(st.sampled_from(['xmp:Rating="{rating}"', 'rdf:about=""']))
    return VALID.replace(where, where.split("=")[0] + '="' + value + '"').replace("{rating}", "0").encode()


HOSTILE = st.binary(max_size=2000) | mutated() | xmlish() | deep() | huge_attribute()


def _rating_in(path: Path) -> list[str]:
    text, _ = _decode(path.read_bytes(), path)  # (expat reads no UTF-32: our decoder, then the stdlib parser)
    root = ET.fromstring(text)
    return [d.get(RATING) for d in root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
            if d.get(RATING) is not None]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=HOSTILE, stars=st.integers(1, 5), overwrite=st.booleans(), dry_run=st.booleans())
def test_hostile_sidecar_is_merged_or_skipped_untouched(data, stars, overwrite, dry_run):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "IMG_0001.xmp"
        path.write_bytes(data)
        started = time.monotonic()
        tracemalloc.start()
        try:
            change = plan_and_write(path, stars, 0.5, "m", overwrite_ratings=overwrite, dry_run=dry_run)
        except XmpError as exc:
            change, message = None, str(exc)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.monotonic() - started < 10
        assert peak < 64 * 2**20 + 64 * len(data), peak
        event("skipped" if change is None else change.action)
        if change is None:
            assert "\n" not in message and path.name in message and len(message) < 400, message
            assert path.read_bytes() == data
            return
        if dry_run:
            assert path.read_bytes() == data
            return
        assert _rating_in(path) == [change.new_rating]
        if overwrite or change.action != "keep-hand-rating":
            assert change.new_rating == str(stars)
        # What we wrote, we read back next time.
        assert plan_and_write(path, stars, 0.5, "m", overwrite_ratings=True).new_rating == str(stars)
