"""Image files by name and by content: what discovery takes, what decoding sends to rawpy, and what
no report, sidecar or weights file may ever be written over."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Camera RAW formats, decoded with rawpy (LibRaw) rather than Pillow (which would only see a
# TIFF thumbnail in some of them). Every format LibRaw reads by extension is here.
RAW_EXTENSIONS = frozenset({
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".dng", ".pef", ".srw",
    ".x3f", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".rwl", ".mrw", ".kdc", ".dcr", ".k25", ".raw", ".fff", ".cap",
    ".eip", ".bay", ".mdc", ".ari", ".cs1", ".dcs", ".drf", ".gpr", ".mfw", ".ptx", ".pxn", ".rdc", ".sti", ".rwz",
})
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".tif", ".tiff", ".webp", ".bmp", ".dib",
    ".gif", ".heic", ".heif", ".hif", ".avif",
}) | RAW_EXTENSIONS
# Files that sit next to photos and are never images: skip without reading them.
SKIP_EXTENSIONS = frozenset({".xmp", ".txt", ".json", ".csv", ".html", ".htm", ".pp3", ".dop", ".on1", ".db",
                             ".aae", ".thm", ".mov", ".mp4", ".m4v", ".avi", ".mts", ".wav", ".part"})


def sniff(head: bytes) -> str | None:
    """Image format from a file's first 32 bytes, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 18:
        return "BMP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif",
                                               b"avis", b"heim", b"heis"):
        return "HEIF"
    return None




def raw_or_media(head: bytes) -> str | None:
    """Camera RAW formats that are not TIFF inside (those :func:`sniff` knows), and every ISO
    media file (CR3, HEIF of any brand, MP4/MOV), from a file's first 32 bytes: never decoded by
    content, but never written over either."""
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return "RAF"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR"):
        return "ORF"
    if head[:4] == b"IIU\x00":
        return "RW2"
    if head[:4] == b"FOVb":
        return "X3F"
    if head[:4] == b"\x00MRM":
        return "MRW"
    if head[:2] in (b"II", b"MM") and head[6:14] == b"HEAPCCDR":
        return "CRW"
    if head[4:8] == b"ftyp":
        return "ISO media"
    return None


def holds_image(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file whose content is an image (by signature, not name; RAW
    and ISO media included). Never opens a FIFO or device (reading could block)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(32)
        return sniff(head) is not None or raw_or_media(head) is not None
    except OSError:
        return False


def image_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must never be written over because it is (or is named like) a photo, or None."""
    p = Path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return f"it is named like an image ({p.suffix})"
    if holds_image(p):
        return "it is an image"
    return None
