"""XMP sidecars: star ratings and scores where photo managers read them.

* Adobe/Lightroom convention: ``IMG_0001.xmp`` beside ``IMG_0001.JPG``; darktable:
  ``IMG_0001.JPG.xmp``. Both carry ``xmp:Rating`` (1-5) plus ``ilgnet:Score``,
  ``ilgnet:Model`` and ``ilgnet:Rating`` (the rating ilgnet wrote, to tell it from a hand rating).
* An existing sidecar is merged: every other element, attribute, namespace, comment and the
  ``<?xpacket?>`` wrapper are kept; a rating the user set by hand (one that differs from
  ``ilgnet:Rating``) is kept unless ``overwrite_ratings``.
* Parsing is defused (no DTDs, no entity expansion, no external entities): a hostile sidecar
  is refused and left untouched. The image file itself is never opened for writing.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "ilgnet": "https://github.com/ilgnet/ilgnet-cli/ns/1.0/",
}
STYLES = ("adobe", "darktable", "both")

TEMPLATE = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="ilgnet">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


class XmpError(Exception):
    """A sidecar we refuse to touch (hostile or unparseable); ``str()`` says why."""


def sidecar_paths(image: str | Path, style: str) -> list[Path]:
    image = Path(image)
    adobe = image.with_suffix(".xmp")
    darktable = image.with_name(image.name + ".xmp")
    return {"adobe": [adobe], "darktable": [darktable], "both": [adobe, darktable]}[style]


def check_options(style: str, stars_spec: str) -> None:
    """Raise ValueError (one line) for an unknown sidecar style or star spec: before any scoring."""
    if style not in STYLES:
        raise ValueError(f"--xmp-style must be one of {', '.join(STYLES)}")
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
            raise ValueError("--stars fixed needs four increasing thresholds, e.g. fixed:0.3,0.45,0.6,0.75")
        return [1 + sum(s >= b for b in bounds) for s in scores]
    raise ValueError(f"--stars must be 'quantile' or 'fixed:T1,T2,T3,T4' (got {spec!r})")


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _register_namespaces(text: str) -> None:
    # Keep the document's own prefixes when ElementTree writes it back.
    for prefix, uri in re.findall(r'xmlns:([A-Za-z_][\w.-]*)="([^"]+)"', text):
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:
            pass
    for prefix, uri in NS.items():
        ET.register_namespace(prefix, uri)


def _parse(text: str, path: Path) -> tuple[str, ET.Element, str]:
    """(text before the root, root element, text after) with a defused parser."""
    try:
        SafeET.fromstring(text.encode("utf-8"))  # rejects DTDs, entities, external references
    except DefusedXmlException as exc:
        raise XmpError(f"{path.name}: refused, unsafe XML ({type(exc).__name__})") from None
    except ET.ParseError as exc:
        raise XmpError(f"{path.name}: not valid XML ({exc})") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise XmpError(f"{path.name}: refused, unsafe XML (DTD)")
    start = re.search(r"<(?!\?|!)", text)
    end = text.rfind(">", 0, text.rfind("<?xpacket end") if "<?xpacket end" in text else len(text)) + 1
    if start is None:
        raise XmpError(f"{path.name}: no XML element")
    parser = SafeET.DefusedXMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
    parser.feed(text[start.start():end])
    root = parser.close()
    return text[:start.start()], root, text[end:]


def _description(root: ET.Element) -> ET.Element:
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf", "RDF"))
    desc = rdf.find(_q("rdf", "Description"))
    if desc is None:
        desc = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})
    return desc


def _get(desc: ET.Element, key: str) -> str | None:
    if key in desc.attrib:
        return desc.attrib[key]
    child = desc.find(key)
    return child.text if child is not None else None


def _set(desc: ET.Element, key: str, value: str) -> None:
    child = desc.find(key)
    if child is not None:  # written as an element by the other program: keep that form
        child.text = value
    else:
        desc.set(key, value)


@dataclass
class SidecarChange:
    path: Path
    action: str  # "create", "update", "keep-hand-rating", "unchanged"
    old_rating: str | None
    new_rating: str | None
    score: float


def plan_and_write(path: Path, stars: int, score: float, model: str, *, overwrite_ratings: bool = False,
                   dry_run: bool = False) -> SidecarChange:
    """Merge rating + score into the sidecar at ``path`` (created if absent); atomic write."""
    from ilgnet_cli.fsutil import atomic_write_text

    exists = path.exists()
    text = path.read_text(encoding="utf-8-sig") if exists else TEMPLATE
    _register_namespaces(text)
    head, root, tail = _parse(text, path)
    desc = _description(root)
    rating_key, ours_key = _q("xmp", "Rating"), _q("ilgnet", "Rating")
    old = _get(desc, rating_key)
    ours = _get(desc, ours_key)
    hand_rating = old is not None and old != ours and old not in ("0", "")
    new = str(stars)
    action = "create" if not exists else "update"
    if hand_rating and not overwrite_ratings:
        action, new = "keep-hand-rating", old
    else:
        _set(desc, rating_key, new)
        _set(desc, ours_key, new)
    _set(desc, _q("ilgnet", "Score"), f"{score:.6f}")
    _set(desc, _q("ilgnet", "Model"), model)
    if not dry_run:
        body = ET.tostring(root, encoding="unicode")
        if head and not head.endswith("\n"):
            head += "\n"
        atomic_write_text(path, head + body + (tail if tail.strip() else "\n"))
    return SidecarChange(path=path, action=action, old_rating=old, new_rating=new, score=score)


def write_sidecars(results: list, *, style: str = "adobe", stars_spec: str = "quantile", model: str,
                   overwrite_ratings: bool = False, dry_run: bool = False) -> tuple[list[SidecarChange], list[str]]:
    """Sidecars for every scored result; returns (changes, one-line errors)."""
    check_options(style, stars_spec)
    scored = [r for r in results if r.ok]
    stars = stars_for([r.score for r in scored], stars_spec)
    changes, errors = [], []
    for r, s in zip(scored, stars, strict=True):
        for path in sidecar_paths(r.path, style):
            try:
                changes.append(plan_and_write(path, s, r.score, model, overwrite_ratings=overwrite_ratings,
                                              dry_run=dry_run))
            except (XmpError, OSError) as exc:
                errors.append(str(exc) if isinstance(exc, XmpError) else f"{path}: {exc}")
    return changes, errors
