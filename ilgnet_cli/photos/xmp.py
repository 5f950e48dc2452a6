"""XMP sidecars: star ratings and scores where photo managers read them.

* Adobe/Lightroom convention: ``IMG_0001.xmp`` beside ``IMG_0001.JPG``; darktable:
  ``IMG_0001.JPG.xmp``. Both carry ``xmp:Rating`` (1-5) plus ``ilgnet:Score``,
  ``ilgnet:Model`` and ``ilgnet:Rating`` (the rating ilgnet wrote, to tell it from a hand rating).
* An existing sidecar is merged: every other element, attribute, namespace, comment and the
  ``<?xpacket?>`` wrapper are kept; a rating the user set by hand is kept unless
  ``overwrite_ratings``. Not hand ratings (:func:`not_the_users`, the rule ``learn`` uses too):
  one equal to ``ilgnet:Rating``, ilgnet's copy of the user's rating (``ilgnet:KeptRating``),
  any star the ledger says ilgnet wrote for the photo (a photo manager's copy), and darktable's
  default (its initial rating, in a sidecar darktable wrote). ``write_sidecars`` first reads
  the photo's other sources (the other sidecar style, embedded XMP, EXIF): a rating the user
  made there is written instead of ilgnet's guess, as ``ilgnet:KeptRating``, so that the photo
  manager reading this sidecar shows the user's rating, never ilgnet's.
* Parsing is defused (no DTDs, no entity expansion, no external entities): a hostile sidecar
  is refused and left untouched. The image file itself is never opened for writing.
* Encodings: the BOM, else the null-byte pattern of the first ``<`` (UTF-16/32 without a BOM),
  else the XML declaration's ``encoding``, else UTF-8 (XML's and XMP's default; the xpacket's
  ``begin`` then holds the UTF-8 BOM bytes). A sidecar is written back in the encoding, and with
  the BOM, it came in, so other tools keep reading it; characters the encoding lacks (an 8-bit
  declared one) become character references.
* Whatever cannot be merged safely is skipped with a one-line ``XmpError`` and left byte for byte:
  undecodable bytes, invalid XML, DTDs/entities, more than ``MAX_SIDECAR_BYTES``, nesting deeper
  than ``MAX_DEPTH``, more than ``MAX_ELEMENTS`` elements or ``MAX_NAMESPACES`` declarations, a
  root that is not XMP, and any path that is not a regular file. A sidecar that is a symbolic
  link is refused, never followed (the atomic rename would replace the link, and a link may
  point out of the photo's folder); a FIFO or device is never opened. Before anything is
  written the result is decoded and parsed again.
* An existing ``xmp:Rating`` counts as a hand rating only when it is a real XMP rating (-1 for
  rejected, or 1-5; XMP allows reals such as 3.5) that is not ilgnet's or darktable's default
  (above); anything else ('abc', '99', '-5') is no rating, and is replaced.
* A hard-linked sidecar is replaced by a new file (atomic rename), never written through: the
  other names keep their content.
* Two images with one sidecar (``a.CR2`` + ``a.JPG`` in Adobe style; names that differ only in
  case, which collide on macOS/Windows/exFAT): one sidecar is written, for the RAW (Lightroom
  keeps a RAW+JPEG pair's rating in the RAW's sidecar), else for the first path in sorted order;
  the others get a ``clash`` change and a warning. darktable style never clashes.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import stat
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from ilgnet_cli.errors import IlgnetError, UsageError
from ilgnet_cli.runtime.text import clip

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "ilgnet": "https://github.com/ilgnet/ilgnet-cli/ns/1.0/",
}
# Read, never written: whose sidecar it is, and ratings other programs keep in XMP.
READ_NS = {
    "darktable": "http://darktable.sf.net/",  # every sidecar darktable writes declares it
    "MicrosoftPhoto": "http://ns.microsoft.com/photo/1.0/",  # Windows: Rating in percent
    "digiKam": "http://www.digikam.org/ns/1.0/",  # PickLabel: 0 none, 1 rejected, 2 pending, 3 accepted
}
STYLES = ("adobe", "darktable", "both")
XML_NS = "http://www.w3.org/XML/1998/namespace"
ROOTS = frozenset({"{adobe:ns:meta/}xmpmeta", "{adobe:ns:meta/}xapmeta", f"{{{NS['rdf']}}}RDF"})
# Real sidecars are kilobytes (darktable's history: hundreds of KB) and some 20 levels deep.
MAX_SIDECAR_BYTES = 4 << 20
MAX_DEPTH = 100
MAX_ELEMENTS = 100_000
MAX_NAMESPACES = 1000  # real ones declare a dozen; ElementTree's prefix table is quadratic

TEMPLATE = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="ilgnet">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


class XmpError(IlgnetError):
    """A sidecar we refuse to touch (hostile or unparseable); ``str()`` says why."""


def sidecar_paths(image: str | Path, style: str) -> list[Path]:
    image = Path(image)
    adobe = image.with_suffix(".xmp")
    darktable = image.with_name(image.name + ".xmp")
    return {"adobe": [adobe], "darktable": [darktable], "both": [adobe, darktable]}[style]


def check_options(style: str, stars_spec: str) -> None:
    """Raise ValueError (one line) for an unknown sidecar style or star spec: before any scoring."""
    if style not in STYLES:
        raise UsageError(f"--xmp-style must be one of {', '.join(STYLES)}")
    stars_for([], stars_spec)


def stars_for(scores: list[float], spec: str) -> list[int]:
    """1-5 stars for each score: ``quantile`` (quintiles of this run) or ``fixed:T1,T2,T3,T4``."""
    if spec == "quantile":
        order = sorted(range(len(scores)), key=lambda i: scores[i])
        stars = [0] * len(scores)
        for rank, i in enumerate(order):
            stars[i] = 1 + min(4, rank * 5 // max(1, len(scores)))
        return stars
    if spec.startswith("fixed:"):
        try:
            bounds = [float(t) for t in spec[6:].split(",")]
        except ValueError:
            bounds = []
        if len(bounds) != 4 or bounds != sorted(bounds):
            raise UsageError("--stars fixed needs four increasing thresholds, e.g. fixed:0.3,0.45,0.6,0.75")
        return [1 + sum(s >= b for b in bounds) for s in scores]
    raise UsageError(f"--stars must be 'quantile' or 'fixed:T1,T2,T3,T4' (got {spec!r})")


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"



# Characters XML 1.0 allows; anything else in a value we write (a model name with control
# characters or undecodable file-name bytes) would make a sidecar no parser reads.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


@contextmanager
def _namespaces(declared: list[tuple[str, str]]) -> Iterator[None]:
    """Write with the document's own prefixes; ElementTree's prefix table is global, so it is
    restored afterwards and one sidecar's declarations never leak into the next."""
    table = getattr(ET, "_namespace_map", None)
    saved = dict(table) if table is not None else None
    try:
        for prefix, uri in declared:
            # 'xml' is bound for good; rebinding it (or its URI) would write xml:lang as ns0:lang.
            if prefix and prefix not in ("xml", "xmlns") and uri != XML_NS:
                try:
                    ET.register_namespace(prefix, uri)
                except ValueError:  # ns0-style prefixes are ElementTree's own
                    pass
        for prefix, uri in NS.items():
            ET.register_namespace(prefix, uri)
        yield
    finally:
        if table is not None and saved is not None:
            table.clear()
            table.update(saved)


@dataclass(frozen=True)
class _Encoding:
    codec: str  # Python codec for the text after the BOM
    bom: bytes = b""


_BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\xef\xbb\xbf", "utf-8"),
         (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))
_DECLARED = re.compile(rb"""<\?xml\s[^>]{0,200}?\bencoding\s*=\s*["']([^"'>]{0,60})["']""")


def _sniff(data: bytes, path: Path) -> _Encoding:
    """The sidecar's encoding, as XML 1.0 Appendix F detects it."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return _Encoding(codec, bom)
    # No BOM: the null bytes around the first character ('<' or whitespace) give UTF-16/32.
    head = data[:4]
    if len(head) == 4 and head[:3] == b"\0\0\0" and head[3]:
        return _Encoding("utf-32-be")
    if len(head) == 4 and head[0] and head[1:] == b"\0\0\0":
        return _Encoding("utf-32-le")
    if len(head) >= 2 and not head[0] and head[1]:
        return _Encoding("utf-16-be")
    if len(head) >= 2 and head[0] and not head[1]:
        return _Encoding("utf-16-le")
    declared = _DECLARED.match(data.lstrip()[:300]) if data.lstrip().startswith(b"<?xml") else None
    if declared is None:
        return _Encoding("utf-8")
    name = declared.group(1).decode("ascii", "replace")
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise XmpError(f"{path}: unknown encoding {clip(name)!r}") from None
    if not getattr(info, "_is_text_encoding", True) or info.name.startswith(("utf-16", "utf-32")):
        # rot13/hex are not text; a UTF-16/32 declaration in 8-bit bytes is a lie.
        raise XmpError(f"{path}: unusable encoding {clip(name)!r}")
    return _Encoding(info.name)


def _read_existing(path: Path) -> bytes | None:
    """The sidecar's bytes; None if there is none. Only a regular file is ever opened."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise XmpError(f"{path}: is a symbolic link; not followed (ratings are written only to plain files)")
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "special"
        raise XmpError(f"{path}: not a regular file ({kind})")
    if st.st_size > MAX_SIDECAR_BYTES:
        raise XmpError(f"{path}: too large for a sidecar ({st.st_size} bytes, at most {MAX_SIDECAR_BYTES})")
    # O_NOFOLLOW/O_NONBLOCK: a link or FIFO swapped in since lstat neither redirects nor blocks us.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise XmpError(f"{path}: not a regular file")
        data = fh.read(MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        raise XmpError(f"{path}: too large for a sidecar (more than {MAX_SIDECAR_BYTES} bytes)")
    return data


def _decode(data: bytes, path: Path) -> tuple[str, _Encoding]:
    enc = _sniff(data, path)
    body = data[len(enc.bom):]
    try:
        text = body.decode(enc.codec)
    except UnicodeDecodeError as exc:
        raise XmpError(f"{path}: cannot decode as {enc.codec} (byte {exc.start + len(enc.bom)})") from None
    except UnicodeError as exc:  # codecs such as idna raise their own
        raise XmpError(f"{path}: cannot decode as {enc.codec} ({clip(str(exc))})") from None
    try:
        same = text.encode(enc.codec) == body
    except UnicodeError:
        same = False
    if not same:  # it would not come back as it was: leave it to the tool that wrote it
        raise XmpError(f"{path}: encoding {enc.codec} does not round-trip; left as it is")
    return text, enc


class _Builder(ET.TreeBuilder):
    """A TreeBuilder that caps depth and size, and notes where the root starts and ends and
    which prefixes the document declares."""

    def __init__(self, path: Path) -> None:
        super().__init__(insert_comments=True, insert_pis=True)
        self.path = path
        self.parser: SafeET.DefusedXMLParser | None = None  # set by _parse before it feeds
        self.depth = self.count = 0
        self.root_start: int | None = None
        self.root_end: int | None = None
        self.prefixes: list[tuple[str, str]] = []

    def start_ns(self, prefix: str, uri: str) -> None:
        self.prefixes.append((prefix, uri))
        if len(self.prefixes) > MAX_NAMESPACES:
            raise XmpError(f"{self.path}: refused, too many namespace declarations (more than {MAX_NAMESPACES})")

    def start(self, tag, attrs):
        self.depth += 1
        self.count += 1
        if self.depth > MAX_DEPTH:
            raise XmpError(f"{self.path}: refused, elements nested too deep (more than {MAX_DEPTH})")
        if self.count > MAX_ELEMENTS:
            raise XmpError(f"{self.path}: refused, too many elements (more than {MAX_ELEMENTS})")
        if self.root_start is None:
            self.root_start = self._byte_index()
        return super().start(tag, attrs)

    def end(self, tag):
        self.depth -= 1
        if self.depth == 0:
            self.root_end = self._byte_index()
        return super().end(tag)

    def _byte_index(self) -> int:
        assert self.parser is not None, "_parse sets the parser before feeding"
        return self.parser.parser.CurrentByteIndex


def _tag_end(data: bytes, i: int) -> int:
    """Index after the tag that starts at ``data[i]`` ('>' may sit inside quoted attribute values)."""
    quote = None
    for j in range(i, len(data)):
        c = data[j]
        if quote is not None:
            if c == quote:
                quote = None
        elif c in b"\"'":
            quote = c
        elif c == ord(">"):
            return j + 1
    return len(data)


@dataclass
class _Doc:
    head: str  # the text before the root (XML declaration, xpacket header, comments), verbatim
    root: ET.Element
    tail: str  # the text after it (xpacket trailer), verbatim
    prefixes: list[tuple[str, str]]


def _parse(text: str, path: Path) -> _Doc:
    """Parse with a defused parser (no DTD, no entities): root, and the text around it."""
    builder = _Builder(path)
    parser = SafeET.DefusedXMLParser(target=builder, forbid_dtd=True)
    builder.parser = parser
    try:
        parser.feed(text)  # a str: expat reads it as UTF-8, whatever the declaration says
        root = parser.close()
    except DefusedXmlException as exc:
        raise XmpError(f"{path}: refused, unsafe XML ({type(exc).__name__})") from None
    except ET.ParseError as exc:
        raise XmpError(f"{path}: not valid XML ({clip(str(exc))})") from None
    if root is None or builder.root_start is None or builder.root_end is None:
        raise XmpError(f"{path}: no XML element")
    if root.tag not in ROOTS:
        raise XmpError(f"{path}: not an XMP packet (its root is {clip(str(root.tag))!r})")
    raw = text.encode("utf-8")  # expat's offsets count UTF-8 bytes
    start, end = builder.root_start, builder.root_end
    if end == start or raw.startswith(b"</", end):  # expat marks an end tag at its '<'
        end = _tag_end(raw, end)
    return _Doc(raw[:start].decode("utf-8"), root, raw[end:].decode("utf-8"), builder.prefixes)


def _descriptions(root: ET.Element) -> list[ET.Element]:
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf", "RDF"))
    descs = rdf.findall(_q("rdf", "Description"))
    if not descs:
        descs = [ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})]
    return descs


def _holder(descs: list[ET.Element], key: str) -> ET.Element:
    """The rdf:Description that holds ``key`` (XMP may spread properties over several), else the first."""
    for desc in descs:
        if key in desc.attrib or desc.find(key) is not None:
            return desc
    return descs[0]


def _get(descs: list[ET.Element], key: str) -> str | None:
    desc = _holder(descs, key)
    if key in desc.attrib:
        return desc.attrib[key]
    child = desc.find(key)
    return child.text if child is not None else None


def _set(descs: list[ET.Element], key: str, value: str, path: Path) -> None:
    desc = _holder(descs, key)
    child = desc.find(key)
    if key in desc.attrib or child is None:
        desc.set(key, value)
    elif len(child):  # a structure where a value belongs: not ours to flatten
        raise XmpError(f"{path}: {key.rpartition('}')[2]} is not a simple value; left as it is")
    else:  # written as an element by the other program: keep that form
        child.text = value


def _remove(descs: list[ET.Element], key: str) -> None:
    """Drop ``key`` (attribute or simple element) wherever it is."""
    for desc in descs:
        desc.attrib.pop(key, None)
        for child in desc.findall(key):
            if not len(child):
                desc.remove(child)


def _as_rating(value: str | None) -> float | None:
    """``value`` as an XMP rating (-1 rejected, 0 unrated, up to 5); None when it is not one."""
    try:
        rating = float((value or "").strip())
    except ValueError:
        return None
    return rating if math.isfinite(rating) and (rating == -1 or 0 <= rating <= 5) else None


def read_ratings(path: str | Path, data: bytes | None = None) -> tuple[float | None, float | None]:
    """(``xmp:Rating``, ``ilgnet:Rating``) of the sidecar at ``path``, or of the XMP packet ``data``
    (embedded in an image; ``path`` then only names it in messages); None where absent or not a
    rating. Read with the same defused, capped parser as merging: raises XmpError (one line)
    for what it refuses, OSError for a file it cannot read. No sidecar: (None, None)."""
    packet = read_packet(path, data)
    return (packet.rating, packet.ours) if packet is not None else (None, None)


@dataclass(frozen=True)
class PacketRatings:
    """What one XMP packet says about its photo's rating, and who wrote it."""

    rating: float | None = None  # xmp:Rating (-1 rejected, 0 unrated, up to 5)
    ours: float | None = None  # ilgnet:Rating: the star ilgnet guessed
    kept: float | None = None  # ilgnet:KeptRating: the user's rating ilgnet copied here from elsewhere
    microsoft: float | None = None  # MicrosoftPhoto:Rating as stars
    pick_label: int | None = None  # digiKam:PickLabel
    darktable: bool = False  # written by darktable (its namespace is in the packet)


def percent_stars(value: str | None) -> float | None:
    """Windows' MicrosoftPhoto:Rating / EXIF RatingPercent (1, 25, 50, 75, 99 for 1-5 stars) as
    stars, with the ranges Windows reads back (1-12, 13-37, 38-62, 63-87, 88-100); 0: unrated."""
    try:
        p = float((value or "").strip())
    except ValueError:
        return None
    if not math.isfinite(p) or not 1 <= p <= 100:
        return None
    return float(1 + sum(p >= b for b in (13, 38, 63, 88)))


def _pick_label(value: str | None) -> int | None:
    try:
        label = int((value or "").strip())
    except ValueError:
        return None
    return label if 0 <= label <= 3 else None


def _by_darktable(descs: list[ET.Element]) -> bool:
    prefix = f"{{{READ_NS['darktable']}}}"
    return any(k.startswith(prefix) for d in descs for k in d.attrib) or any(
        isinstance(child.tag, str) and child.tag.startswith(prefix) for d in descs for child in d)


def _packet(descs: list[ET.Element]) -> PacketRatings:
    def read(uri: str, name: str) -> str | None:
        return _get(descs, f"{{{uri}}}{name}")

    return PacketRatings(
        rating=_as_rating(read(NS["xmp"], "Rating")), ours=_as_rating(read(NS["ilgnet"], "Rating")),
        kept=_as_rating(read(NS["ilgnet"], "KeptRating")),
        microsoft=percent_stars(read(READ_NS["MicrosoftPhoto"], "Rating")),
        pick_label=_pick_label(read(READ_NS["digiKam"], "PickLabel")), darktable=_by_darktable(descs))


def read_packet(path: str | Path, data: bytes | None = None) -> PacketRatings | None:
    """Everything rating-related in the sidecar at ``path`` (None: no sidecar) or in the packet
    ``data``; raises as :func:`read_ratings`."""
    path = Path(path)
    if data is None:
        data = _read_existing(path)
        if data is None:
            return None
    elif len(data) > MAX_SIDECAR_BYTES:
        raise XmpError(f"{path}: XMP packet too large (more than {MAX_SIDECAR_BYTES} bytes)")
    text, _ = _decode(data, path)
    return _packet(_descriptions(_parse(text, path).root))


# Why a rating is not the user's opinion (None: it is). The same rule for `learn` (ratings.py)
# and for the hand-rating rule of `score --xmp`.
ILGNET_MARKER = "ilgnet_marker"  # xmp:Rating equal to ilgnet:Rating in the same packet
ILGNET_KEPT = "ilgnet_kept_copy"  # ilgnet's copy of the user's rating from another source
ILGNET_LEDGER = "ilgnet_ledger"  # a star ilgnet once wrote for this photo, copied by a photo manager
DARKTABLE_DEFAULT = "darktable_default"  # darktable's initial rating, in a sidecar darktable wrote


def not_the_users(rating: float | None, packet: PacketRatings, ilgnet_stars: Callable[[], Collection[float]],
                  darktable_initial: float | None) -> str | None:
    """Why ``rating`` (read from ``packet``) is not the user's, or None when it is.

    ``ilgnet_stars`` gives every star ilgnet wrote for the photo (the ledger; called only when
    needed); ``darktable_initial`` is darktable's initial rating (None or 0: it gives none)."""
    if rating is None or rating == 0:
        return None
    if packet.kept is not None and rating == packet.kept:
        return ILGNET_KEPT  # (a reject too: ilgnet copies the user's rejects)
    if rating == -1:
        return None  # ilgnet never guesses a reject
    if packet.ours is not None and rating == packet.ours:
        return ILGNET_MARKER
    if rating in ilgnet_stars():
        return ILGNET_LEDGER
    if packet.darktable and darktable_initial and rating == darktable_initial:
        return DARKTABLE_DEFAULT
    return None


@dataclass(frozen=True)
class RatingContext:
    """What the rest of a photo's metadata says, read before anything is written.

    ``ilgnet_stars``: every star ilgnet wrote for the photo (ledger); ``darktable_initial``:
    darktable's initial rating (a darktable sidecar's rating equal to it is no opinion);
    ``hand``: the user's rating found in another source of this photo (value, where), which the
    sidecar then shows instead of ilgnet's guess."""

    ilgnet_stars: frozenset[float] = frozenset()
    darktable_initial: float | None = 1.0
    hand: tuple[float, str] | None = None


@dataclass
class SidecarChange:
    path: Path
    action: str  # "create", "update", "keep-hand-rating", "clash" (another image's sidecar: not written)
    old_rating: str | None
    new_rating: str | None
    score: float
    kept_from: str | None = None  # keep-hand-rating: the other source whose rating was written here


def plan_and_write(path: Path, stars: int, score: float, model: str, *, overwrite_ratings: bool = False,
                   dry_run: bool = False, context: RatingContext | None = None) -> SidecarChange:
    """Merge rating + score into the sidecar at ``path`` (created if absent); atomic write.

    The sidecar's rating is the user's (kept) unless it is ilgnet's own (``ilgnet:Rating``, a
    copy ilgnet made, a star the ledger lists) or darktable's default (``context``); when it is
    not, a rating the user set elsewhere (``context.hand``) is written instead of ilgnet's guess,
    marked as a copy (``ilgnet:KeptRating``), so that photo managers show the user's rating.
    ``overwrite_ratings`` writes ilgnet's guess regardless.

    Raises XmpError (one line, naming the file) for a sidecar it will not touch, which is then
    left byte for byte; OSError for one it cannot read or write.
    """
    from ilgnet_cli.runtime.fsutil import atomic_write_bytes

    ctx = context or RatingContext()
    data = _read_existing(path)
    text, enc = _decode(data, path) if data is not None else (TEMPLATE, _Encoding("utf-8"))
    doc = _parse(text, path)
    descs = _descriptions(doc.root)
    rating_key, ours_key = _q("xmp", "Rating"), _q("ilgnet", "Rating")
    kept_key, kept_from_key = _q("ilgnet", "KeptRating"), _q("ilgnet", "KeptFrom")
    old = _get(descs, rating_key)
    old_rating = _as_rating(old)
    hand_rating = old_rating not in (None, 0) and not_the_users(
        old_rating, _packet(descs), lambda: ctx.ilgnet_stars, ctx.darktable_initial) is None
    new = str(stars)
    action = "create" if data is None else "update"
    kept_from = None
    if hand_rating and not overwrite_ratings and old is not None:  # a hand rating is never None
        action, new = "keep-hand-rating", old
    elif ctx.hand is not None and not overwrite_ratings:
        # The user rated this photo elsewhere: show theirs, marked as a copy (learn reads the original).
        action, new, kept_from = "keep-hand-rating", f"{ctx.hand[0]:g}", ctx.hand[1]
        _set(descs, rating_key, new, path)
        _set(descs, kept_key, new, path)
        _set(descs, kept_from_key, _xml_safe(ctx.hand[1]), path)
        _remove(descs, ours_key)
    else:
        _set(descs, rating_key, new, path)
        _set(descs, ours_key, new, path)
        _remove(descs, kept_key)
        _remove(descs, kept_from_key)
    _set(descs, _q("ilgnet", "Score"), f"{score:.6f}", path)
    _set(descs, _q("ilgnet", "Model"), _xml_safe(model), path)
    with _namespaces(doc.prefixes):
        body = ET.tostring(doc.root, encoding="unicode")
    head = doc.head if not doc.head or doc.head.endswith("\n") else doc.head + "\n"
    out = head + body + (doc.tail if doc.tail.strip() else "\n")
    try:  # an 8-bit declared encoding: what it lacks (a model name) becomes a character reference
        result = enc.bom + out.encode(enc.codec, "xmlcharrefreplace")
    except UnicodeError as exc:
        raise XmpError(f"{path}: cannot write it back as {enc.codec} ({clip(str(exc))})") from None
    _check_merged(result, enc, new, path)
    if not dry_run:
        atomic_write_bytes(path, result)
    return SidecarChange(path=path, action=action, old_rating=None if old is None else clip(old), new_rating=new,
                         score=score, kept_from=kept_from)


def _check_merged(data: bytes, enc: _Encoding, rating: str, path: Path) -> None:
    """Never write what we could not read back: same encoding, valid XMP, our rating in it."""
    try:
        text, again = _decode(data, path)
        doc = _parse(text, path)
    except XmpError as exc:
        raise XmpError(f"cannot merge safely: {exc}") from None
    if again != enc or _get(_descriptions(doc.root), _q("xmp", "Rating")) != rating:
        raise XmpError(f"{path}: cannot merge safely (the result does not read back); left as it is")


def _clash_key(path: Path) -> tuple[str, str]:
    # macOS, Windows and exFAT cards ignore case (and macOS normalises Unicode): one file there.
    return str(path.parent), unicodedata.normalize("NFC", path.name).casefold()


def _claim_order(claim: tuple) -> tuple[bool, str]:
    from ilgnet_cli.data.decode import RAW_EXTENSIONS

    image = Path(claim[0].path)
    return image.suffix.lower() not in RAW_EXTENSIONS, str(image)


def _spelling(path: Path, listings: dict[str, dict[str, list[str]]]) -> Path:
    """The sidecar already on disk under another case (``IMG_1.XMP`` for ``IMG_1.xmp``), else ``path``:
    one sidecar per photo on case-sensitive disks too. Each folder is listed once."""
    if os.path.lexists(path):
        return path
    folder = str(path.parent)
    if folder not in listings:
        try:
            names = os.listdir(path.parent)
        except OSError:
            names = []
        listings[folder] = {}
        for name in names:
            listings[folder].setdefault(_clash_key(path.parent / name)[1], []).append(name)
    found = sorted(listings[folder].get(_clash_key(path)[1], []))
    if len(found) > 1:
        raise XmpError(f"{path}: sidecars that differ only in case ({', '.join(found[:4])}); "
                       "none written, merge them by hand")
    return path.parent / found[0] if found else path


def write_sidecars(results: list, *, style: str = "adobe", stars_spec: str = "quantile", model: str,
                   overwrite_ratings: bool = False, dry_run: bool = False, weights_sha256: str | None = None,
                   darktable_initial_rating: int | None = None, ledger: bool = True,
                   notes: list[str] | None = None) -> tuple[list[SidecarChange], list[str]]:
    """Sidecars for every scored result; returns (changes, one-line errors and warnings).

    A sidecar claimed by several images is written once, for the RAW, else for the first path
    in sorted order; each other image gets a ``clash`` change and a warning. A sidecar already
    there under another case (``IMG_1.XMP``) is the one merged.

    Every rating source of each photo (both sidecar styles, embedded XMP, EXIF) is read before
    anything is written: a rating the user made anywhere is kept (see :func:`plan_and_write`),
    ilgnet's own stars and darktable's default (``darktable_initial_rating``; None: from
    darktable's settings, else 1) are not. Unless ``dry_run``, each star ilgnet writes is
    recorded in the ledger (``ledger=False``: not); ledger problems are warnings, appended to
    ``notes`` (else to the errors).
    """
    from ilgnet_cli.photos.ratings import sidecar_contexts

    check_options(style, stars_spec)
    scored = [r for r in results if r.ok]
    stars = stars_for([r.score for r in scored], stars_spec)
    claims: dict[tuple[str, str], dict[str, tuple]] = {}
    for r, s in zip(scored, stars, strict=True):
        for path in sidecar_paths(r.path, style):
            image = os.path.normpath(r.path)  # 'a.jpg' and './a.jpg' are one image
            claims.setdefault(_clash_key(path), {}).setdefault(image, (r, s, path))
    changes, errors = [], []
    listings: dict[str, dict[str, list[str]]] = {}
    planned: list[tuple[Any, int, Path]] = []
    for group in claims.values():
        winner, *others = sorted(group.values(), key=_claim_order)
        r, s, path = winner
        try:
            planned.append((r, s, _spelling(path, listings)))
        except XmpError as exc:
            errors.append(str(exc))
        for other, _, other_path in others:
            changes.append(SidecarChange(path=other_path, action="clash", old_rating=None, new_rating=None,
                                         score=other.score))
            mine, theirs = Path(r.path).name, Path(other.path).name
            errors.append(f"{other_path}: the sidecar of both {mine} and {theirs}; written for {mine} only "
                          "(--xmp-style darktable gives each file its own)")
    # Read first, write after: one photo's new sidecar must not pass for another source of it.
    warnings: list[str] = notes if notes is not None else errors
    contexts = sidecar_contexts([(r.path, path) for r, _, path in planned], darktable_initial_rating,
                                use_ledger=ledger, notes=warnings)
    written = []
    for (r, s, path), ctx in zip(planned, contexts, strict=True):
        try:
            change = plan_and_write(path, s, r.score, model, overwrite_ratings=overwrite_ratings, dry_run=dry_run,
                                    context=ctx)
        except XmpError as exc:
            errors.append(str(exc))
            continue
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
            continue
        changes.append(change)
        if change.action in ("create", "update"):
            written.append((r, s, path))
    if ledger and not dry_run and written:
        from ilgnet_cli.photos.ledger import Ledger, Written

        with Ledger() as book:
            book.record([Written(photo=r.path, stars=s, score=r.score, weights=model, weights_sha256=weights_sha256,
                                 sidecar=str(path)) for r, s, path in written])
            warnings.extend(book.notes)
    return changes, errors
