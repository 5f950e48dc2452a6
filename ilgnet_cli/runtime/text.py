"""The one way untrusted text (file names, EXIF, sidecars, server replies, names in weight files)
is shown: on a terminal, in a page, in a one-line message or in JSON.

* :func:`display`: one line, nothing that drives a terminal (controls, bidi overrides and other
  format characters become visible escapes such as ``\\x1b`` and ``\\u202e``), undecodable
  file-name bytes as U+FFFD.
* :func:`clip`: :func:`display`, cut to a length, for error messages.
* :func:`json_escaped`: JSON text that loads back to the exact name.
"""

from __future__ import annotations

import re
import unicodedata

# File names that are not valid UTF-8 (old cameras, Windows zips, NAS shares) reach Python as
# strings with lone surrogates (PEP 383). They must survive every report and the cache.


def printable(text: str) -> str:
    """``text`` for humans: undecodable file-name bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# Characters that move the cursor, recolour or retitle the terminal, or reorder what is shown
# (bidi overrides make "gpj.exe" read "exe.jpg"): C0/C1 controls, DEL, line/paragraph separators
# and format characters. ZWJ/ZWNJ stay: emoji and Indic scripts need them and they move nothing.
_KEEP_FORMAT = frozenset("\u200c\u200d")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    return ch not in _KEEP_FORMAT and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    return _NAMED.get(ch) or (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")


def escape_controls(text: str) -> str:
    """``text`` with control, bidi and other invisible format characters as visible escapes
    (``\\x1b``, ``\\u202e``, ``\\n``); undecodable file-name bytes are left as they are."""
    if text.isprintable():  # the usual case, and str.isprintable() is False for every unsafe char
        return text
    return "".join(_escape_char(ch) if _unsafe(ch) else ch for ch in text)


def display(text: str | None) -> str:
    """Untrusted text (file names, EXIF, sidecars, error reasons) for a terminal or a page:
    one line, nothing that drives the terminal, undecodable bytes as U+FFFD."""
    return escape_controls(printable(text or ""))


def json_escaped(text: str) -> str:
    """JSON text with undecodable file-name bytes as ``\\udcXX`` escapes: valid JSON, and
    ``os.fsencode(json.loads(...))`` gives back the exact bytes of the name. Control, bidi and
    format characters that ``json.dumps(ensure_ascii=False)`` leaves raw (DEL, C1, U+202E...)
    become ``\\uXXXX`` too, so ``--json`` on a terminal cannot drive it; the names load back exact."""
    return _NON_ASCII.sub(_json_char, text.encode("utf-8", "backslashreplace").decode("utf-8"))


_NON_ASCII = re.compile("[^\x00-\x7e]")  # json.dumps has already escaped C0 controls


def _json_char(m: re.Match[str]) -> str:
    ch = m.group()
    if not _unsafe(ch):
        return ch
    cp = ord(ch)
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    cp -= 0x10000
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def clip(value: object, limit: int = 80) -> str:
    """``value`` (text, or the repr of anything else) for a one-line message: :func:`display`
    applied, runs of whitespace kept as they are, cut to ``limit`` characters with ``...``."""
    text = display(value if isinstance(value, str) else repr(value))
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def quoted(name: object, limit: int = 80) -> str:
    """A name the user gave, quoted for a message: ``'mine'``; anything odd shown escaped."""
    if isinstance(name, str) and len(name) <= limit and name.isprintable():
        return repr(name)
    return clip(repr(name), limit)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name when it has none), clipped."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return clip(text, limit)


def finite(value: object) -> object:
    """``value`` with every NaN or infinity (in any list or dict inside it) as None: strict JSON
    has no such numbers, and a report must load in every JSON reader."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def strict_json(value: object, **kwargs: object) -> str:
    """``json.dumps`` that never writes bare NaN/Infinity (they become null)."""
    import json

    return json.dumps(finite(value), allow_nan=False, **kwargs)  # type: ignore[arg-type]
