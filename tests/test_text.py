"""How untrusted text (file names, EXIF, sidecars, server replies, names in weight files) is shown:
on a terminal, in a one-line message, in JSON. Controls, bidi overrides and other invisible
format characters become visible escapes; names that are not UTF-8 survive."""

from __future__ import annotations

import json
import os
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from ilgnet_cli.runtime.text import clip, display, escape_controls, first_line, json_escaped, printable, quoted

# Names that try to drive a terminal: colour, title change, bell, carriage return (overprint),
# a right-to-left override (``gpj.exe`` shows as ``exe.jpg``), a newline and 8-bit CSI.
HOSTILE = "a\x1b[31mred\x1b]0;pwned\x07\r\u202egpj.exe\nfake,row\x9b2J\x7f.jpg"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\n", "\u202e", "\x9b", "\x7f")


def test_display_escapes_controls_and_bidi_but_keeps_text():
    assert display("a\x1b[31mb") == "a\\x1b[31mb"
    assert display("x\u202ey\u2066z") == "x\\u202ey\\u2066z"
    assert display("l\nr\tc\rd") == "l\\nr\\tc\\rd"
    assert display("\x9b\x7f") == "\\x9b\\x7f"
    assert display("ç_日本_🌸 👩\u200d💻 caf\udce9") == "ç_日本_🌸 👩\u200d💻 caf\ufffd"
    assert display(None) == "" and display("\U000e0001") == "\\U000e0001"


def test_printable_and_escape_controls_are_the_two_halves():
    assert printable("caf\udce9.jpg") == "caf\ufffd.jpg"
    assert escape_controls("caf\udce9\x1b") == "caf\udce9\\x1b"  # undecodable bytes left to printable()
    assert escape_controls("plain") == "plain"


def test_messages_show_controls_as_visible_escapes_and_stay_short():
    """clip, quoted and first_line replaced five private cutters that showed controls as '?':
    a message now says which character it was."""
    assert clip("bad\x1b[2Jname") == "bad\\x1b[2Jname"
    assert clip("x" * 100) == "x" * 77 + "..." and len(clip("y" * 500, 40)) == 40
    assert clip(["a", 1]) == "['a', 1]"  # anything else: its repr
    assert quoted("mine") == "'mine'"
    assert quoted("ok\n") == "'ok\\n'" and "\n" not in quoted("ok\n")
    assert len(quoted("z" * 500)) <= 80
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError" and first_line(OSError("  ")) == "OSError"
    assert "\x1b" not in first_line(RuntimeError("\x1b[31mred")) and len(first_line(RuntimeError("e" * 999))) <= 160


def test_json_keeps_exact_names_without_raw_control_characters():
    names = [HOSTILE, "x\u2028y\u2029z\u200f\u061c\U000e0001.jpg", "caf\udce9.jpg", "emoji 👩\u200d💻"]
    for name in names:
        text = json_escaped(json.dumps({"path": name}, ensure_ascii=False))
        assert not any(c in text for c in (*RAW_CONTROLS, "\u2028", "\u2029", "\u200f", "\u061c", "\U000e0001"))
        back = json.loads(text)["path"]
        assert os.fsencode(back) == os.fsencode(name)  # the exact bytes of the name
    assert "👩\u200d💻" in json_escaped(json.dumps("👩\u200d💻", ensure_ascii=False))  # ZWJ stays


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_displays_on_one_line_with_nothing_that_drives_a_terminal(text):
    shown = display(text)
    assert "\n" not in shown
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") and c not in "\u200c\u200d"
                   for c in shown)
    message = clip(text, 30)
    assert len(message) <= 30 and "\n" not in message
