"""Header facts of the formats OpenCV decodes behind a supported suffix (``image_io``'s
``OTHER_FORMATS``), read from the bytes before decoding: what OpenCV's decode misses or pays for.

- JPEG 2000 (the SIZ marker, also inside a JP2 file's ``jp2c`` box): size, components, tiles and
  sample precision. OpenJPEG sets up state for every tile and component while it reads the
  header: a 271-byte file of 65 025 tiles x 64 components took 4.8 GB (red-team round 8); and
  OpenCV returns 12-bit samples unscaled (read 16x too dark).
- PNM (PGM/PPM/PAM): the maxval the format declares as the sample range (OpenCV returns binary
  PGM/PPM and PAM samples raw: a 12-bit PGM read 16x too dark; ASCII ones it scales itself).
- WebP: the EXIF orientation (OpenCV ignores it), animation, and lossy (a ``VP8 `` image chunk,
  also inside an extended ``VP8X`` file).
- GIF: more than one image (OpenCV reads the first, silently).
- AVIF/HEIF: rotation (``irot``) and mirror (``imir``) properties, which OpenCV does not apply.

Hand-written: OpenCV exposes none of these, and Pillow would decode or open a decoder to tell.
Each walk is bounded (``MAX_RECORDS``, ``MAX_GIF_BLOCKS``) and a file it cannot walk to the end
is refused: a check that gave up and let the decoder run was a way around it.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

MAX_COMPONENTS = 4  # gray, gray + alpha, RGB, RGBA
MAX_TILE_COMPONENTS = 65_536  # JPEG 2000 tiles x components: 65 025 x 3 took 1.4 s and 650 MB
# (6000 px RGB in 64 px tiles is 26 508)
MAX_RECORDS = 4_096  # JP2/HEIF boxes or WebP chunks walked; a file with more is refused (a
# check that gave up and let the decoder run was a way around it)
MAX_GIF_BLOCKS = 1_000_000  # GIF blocks and sub-blocks (a 40 MP GIF has ~160 000); ~0.5 s


@dataclass
class OtherHeader:
    """What a header says. ``problem``: the file is refused with it; ``size``: (width, height)
    when the header gives it; ``stored_max``: the sample range it declares, when below the
    decoded type's; ``exif``: a TIFF-structured EXIF block (orientation); ``lossy``: None when
    the header does not tell."""

    problem: str | None = None
    size: tuple[int, int] | None = None
    stored_max: int | None = None
    exif: bytes = b""
    lossy: bool | None = None


def other_header(name: str, data: bytes) -> OtherHeader:
    """The header facts of ``data``, a file of ``image_io.OTHER_FORMATS`` format ``name``."""
    reader = {"JPEG 2000": _jpeg2000, "PNM (PBM/PGM/PPM)": _pnm, "WebP": _webp, "GIF": _gif,
              "AVIF/HEIF": _heif}.get(name)  # fmt: skip
    try:
        return reader(data) if reader is not None else OtherHeader()
    except (struct.error, ValueError, IndexError):  # a header cut short: the decoder judges
        return OtherHeader()


# ---------------------------------------------------------------------------------- JPEG 2000
def _jpeg2000(data: bytes) -> OtherHeader:
    if data[:4] == b"\xff\x4f\xff\x51":
        return _siz(data, 2)
    at, walked = 0, 0
    while at + 8 <= len(data) and walked < MAX_RECORDS:  # JP2 boxes, to the codestream's
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
        if kind == b"jp2c":
            start = at + head
            return _siz(data, start + 2) if data[start:start + 4] == b"\xff\x4f\xff\x51" else \
                OtherHeader(lossy=True)
        if size == 0 or size < head:
            break
        at, walked = at + size, walked + 1
    return OtherHeader(f"a JP2 file whose codestream box (jp2c) was not found (within its "
                       f"first {MAX_RECORDS} boxes): its size and tiles cannot be checked "
                       "before decoding")


def _siz(data: bytes, at: int) -> OtherHeader:
    """The SIZ marker segment at ``at`` (its FF51)."""
    (xs, ys, xo, yo, tw, th, txo, tyo, comps) = struct.unpack(">IIIIIIIIH", data[at + 6:at + 40])
    size = (xs - xo, ys - yo)
    if comps > MAX_COMPONENTS:
        return OtherHeader(f"a JPEG 2000 image of {comps} components (at most "
                           f"{MAX_COMPONENTS}: gray, RGB or RGBA)", size)
    if tw == 0 or th == 0 or xs <= xo or ys <= yo or not (txo <= xo < txo + tw) or not (
            tyo <= yo < tyo + th):  # (the standard's bounds on the tile grid's offset)
        return OtherHeader(f"a JPEG 2000 header of impossible size ({xs} x {ys}, offset "
                           f"{xo}, {yo}, tiles {tw} x {th})", None)
    tiles = -(-(xs - txo) // tw) * -(-(ys - tyo) // th)
    if tiles * comps > MAX_TILE_COMPONENTS:
        return OtherHeader(f"a JPEG 2000 image of {tiles} tiles x {comps} components (at most "
                           f"{MAX_TILE_COMPONENTS}; its decoder sets up every one before reading "
                           "a pixel)", size)
    ssiz = data[at + 40:at + 40 + 3 * comps:3]
    precisions = {(s & 0x7F) + 1 for s in ssiz}
    signed = any(s & 0x80 for s in ssiz)
    bits = precisions.pop() if len(precisions) == 1 and not signed else None
    stored_max = 2**bits - 1 if bits is not None and bits not in (8, 16) and bits < 16 else None
    return OtherHeader(None, size, stored_max, lossy=True)


# ---------------------------------------------------------------------------------------- PNM
_PAM_LINE = re.compile(rb"^(WIDTH|HEIGHT|DEPTH|MAXVAL|ENDHDR)\b[ \t]*(\d*)", re.M)
_DIGITS = re.compile(rb"\d+")
PNM_HEADER_BYTES = 4096  # a header with more comment than this is not looked into


def _pnm_numbers(data: bytes, count: int) -> list[int] | None:
    """The first ``count`` numbers after a PNM's magic, skipping whitespace and ``#`` comments
    (a scan, not a regex: ``(space|#comment)+`` backtracked exponentially on a run of ``#``, a
    44-byte file for hours; red-team round 8 review)."""
    values, at, end = [], 2, min(len(data), PNM_HEADER_BYTES)
    while len(values) < count and at < end:
        c = data[at]
        if c in b" \t\r\n\v\f":
            at += 1
        elif c == 0x23:  # '#': a comment to the end of its line
            stop = [i for i in (data.find(b"\n", at, end), data.find(b"\r", at, end)) if i >= 0]
            at = min(stop) if stop else end
        elif (found := _DIGITS.match(data, at, end)) is not None:
            values.append(int(found.group()))
            at = found.end()
        else:
            return None
    return values if len(values) == count else None


def _pnm(data: bytes) -> OtherHeader:
    kind = data[1:2]
    if kind == b"7":
        fields = {}
        for key, value in _PAM_LINE.findall(data[:PNM_HEADER_BYTES]):
            if key == b"ENDHDR":
                break
            fields[key] = int(value) if value else 0
        w, h, maxval = fields.get(b"WIDTH"), fields.get(b"HEIGHT"), fields.get(b"MAXVAL")
    else:
        count = 2 if kind in (b"1", b"4") else 3  # a bitmap has no maxval
        values = _pnm_numbers(data, count)
        if values is None:
            return OtherHeader()
        w, h = values[:2]
        # ASCII PGM/PPM (P2, P3): OpenCV scales the samples to 0-255 itself; binary ones and PAM
        # it returns as stored (measured, OpenCV 5.1)
        maxval = values[2] if kind in (b"5", b"6") else None
    size = (w, h) if w and h else None
    keep = maxval if maxval is not None and 0 < maxval < 65535 and maxval != 255 else None
    return OtherHeader(None, size, keep, lossy=False)


# --------------------------------------------------------------------------------------- WebP
def _webp(data: bytes) -> OtherHeader:
    at, walked = 12, 0
    exif, lossy, frames, animated = b"", None, 0, False
    while at + 8 <= len(data) and walked < MAX_RECORDS:
        kind, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        body = data[at + 8:at + 8 + size]
        if kind == b"VP8X" and body:
            animated = bool(body[0] & 0x02)
        elif kind == b"ANMF":
            frames += 1
        elif kind == b"EXIF":
            exif = body[6:] if body.startswith(b"Exif\x00\x00") else body
        elif kind in (b"VP8 ", b"VP8L") and lossy is None:
            lossy = kind == b"VP8 "
        at, walked = at + 8 + size + (size & 1), walked + 1
    if walked >= MAX_RECORDS and at + 8 <= len(data):
        return OtherHeader(f"a WebP of more than {MAX_RECORDS} chunks (one still image has a few)")
    if animated or frames > 1:
        shown = f"{frames} frames" if frames else "animation flag set"
        return OtherHeader(f"an animated WebP ({shown}): one still image expected (export the "
                           "frame to plan as PNG)")
    if frames == 1:
        lossy = None  # the one frame's chunks are inside ANMF: not looked into
    return OtherHeader(exif=exif, lossy=lossy)


# ---------------------------------------------------------------------------------------- GIF
def _gif(data: bytes) -> OtherHeader:
    at = 13
    packed = data[10]
    if packed & 0x80:
        at += 3 * 2 ** ((packed & 7) + 1)
    images, blocks = 0, 0
    while at < len(data) and blocks <= MAX_GIF_BLOCKS:
        block = data[at]
        if block == 0x3B:  # trailer
            break
        if block == 0x2C:  # an image: descriptor, local colour table, LZW code size, data
            images += 1
            if images > 1:
                return OtherHeader("an animated GIF (more than one image): one still image "
                                   "expected (export the frame to plan as PNG)")
            local = data[at + 9]
            at += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        elif block == 0x21:  # an extension: label, then sub-blocks
            at += 2
        else:
            break  # not GIF grammar: the decoder judges
        while at < len(data) and data[at] != 0 and blocks <= MAX_GIF_BLOCKS:  # sub-blocks,
            at += data[at] + 1  # to the empty one
            blocks += 1
        at += 1
        blocks += 1
    if blocks > MAX_GIF_BLOCKS:
        return OtherHeader(f"a GIF of more than {MAX_GIF_BLOCKS} data blocks (a 40 MP image has "
                           "about 160 000): not walked to its end")
    return OtherHeader(lossy=False)


# ----------------------------------------------------------------------------------- AVIF/HEIF
def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, body start, body end) of the ISO base media boxes in data[start:end]."""
    out, at = [], start
    while at + 8 <= end and len(out) < MAX_RECORDS:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
        elif size == 0:
            size = end - at
        if size < head or at + size > end:
            break
        out.append((kind, at + head, at + size))
        at += size
    return out


def _child(data: bytes, boxes: list[tuple[bytes, int, int]], kind: bytes, skip: int = 0
           ) -> list[tuple[bytes, int, int]]:
    """The boxes inside the first box of ``kind`` (``skip``: bytes of a full box's version and
    flags before them)."""
    found = next(((s, e) for k, s, e in boxes if k == kind), None)
    return [] if found is None else _boxes(data, found[0] + skip, found[1])


def _heif(data: bytes) -> OtherHeader:
    top = _boxes(data, 0, len(data))
    meta = _child(data, top, b"meta", skip=4)
    iprp = _child(data, meta, b"iprp")
    properties = _child(data, iprp, b"ipco")
    if any(len(boxes) >= MAX_RECORDS for boxes in (top, meta, iprp, properties)):
        return OtherHeader(f"an AVIF/HEIF file with more than {MAX_RECORDS} boxes in one place: "
                           "its rotation and mirror properties cannot be checked")
    turns = [data[s] & 3 for k, s, e in properties if k == b"irot" and e > s]
    mirrored = any(k == b"imir" for k, _, _ in properties)
    if any(turns) or mirrored:
        what = " and ".join(([f"a rotation of {90 * max(turns)} deg"] if any(turns) else [])
                            + (["a mirror"] if mirrored else []))
        return OtherHeader(f"an AVIF/HEIF image with {what} to apply on display (irot/imir), "
                           "which its decoder here does not apply: convert it to PNG")
    return OtherHeader(lossy=True)
