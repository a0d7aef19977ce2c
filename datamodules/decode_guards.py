"""Cheap checks of an image file's structure, run before a decoder is handed the file.

A decoder believes what a file says about itself: a PNG chunk's length, how far a TIFF strip
inflates, how many scans a JPEG has, how many elements a DICOM holds or how far its deflated
dataset inflates. Fuzzing found files of a few kB to a few MB that made OpenCV, tifffile or
pydicom allocate GBs or work for minutes on such claims. Each check here walks the structure
only (no pixels) with bounded memory and time, and returns one phrase saying what is wrong
(None when nothing is); ``datamodules.image_io`` raises it as an ImageReadError naming the
file. A structure a check cannot follow is left to the decoder, which then reports it.
"""

from __future__ import annotations

import functools
import lzma
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.dicom_frames import ENCAPSULATED, FRAME_TAGS, TEXT_VRS, encapsulated_problem
from datamodules.jpeg_markers import SOS, JpegSegmentError, jpeg_segments

BYTES_PER_PIXEL = 8  # the most a supported image stores per pixel (4 samples of 16 bits)
METADATA_BYTES = 16 * 1024**2  # allowance for headers, tags and thumbnails
INFLATE_STEP = 1024**2  # bytes fed, and inflated, at a time while only counting


# kernel file systems whose "regular" files are generated when read (procfs reports 0 bytes
# for /proc/self/environ, sysfs 4096 for any attribute): never an image or a dataset file
PSEUDO_FILE_SYSTEMS = frozenset({"proc", "sysfs", "debugfs", "tracefs", "securityfs",
                                 "configfs", "cgroup", "cgroup2", "efivarfs", "bpf", "pstore",
                                 "binfmt_misc", "fusectl", "mqueue", "rpc_pipefs", "nsfs"})


@functools.cache
def _pseudo_devices() -> dict[int, str]:
    """The devices (``st_dev``) of this process's mounts of ``PSEUDO_FILE_SYSTEMS``, with
    their type, from /proc/self/mountinfo (empty where it cannot be read: not Linux)."""
    devices: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.read(4 * 1024**2).splitlines()
    except OSError:
        return devices
    for line in lines:  # "36 35 98:0 /root /mnt opts [optional fields] - fstype source opts"
        fields, _, rest = line.partition(" - ")
        parts, kind = fields.split(), rest.split()[:1]
        if len(parts) < 3 or not kind or kind[0] not in PSEUDO_FILE_SYSTEMS:
            continue
        major, _, minor = parts[2].partition(":")
        if major.isdigit() and minor.isdigit():
            devices[os.makedev(int(major), int(minor))] = kind[0]
    return devices


def special_file_problem(st: os.stat_result) -> str | None:
    """Why a file that ``stat`` calls regular is no data file: one of a kernel file system
    (a link to /proc/self/environ was called "empty (0 bytes)"); None for any other."""
    if not stat.S_ISREG(st.st_mode):
        return None
    kind = _pseudo_devices().get(st.st_dev)
    if kind is None:
        return None
    return (f"not a regular file: a special file of the kernel's {kind} file system "
            "(generated when read), not an image or data file")


def image_bytes_cap(limit: int) -> int:
    """The most bytes an image of ``limit`` pixels can need: its samples plus metadata (the
    file-size cap, and the cap on what a deflated DICOM dataset may inflate to)."""
    return BYTES_PER_PIXEL * limit + METADATA_BYTES


def _inflated_over(inflater: Any, data: bytes, budget: int) -> int | None:
    """Feed ``data`` to ``inflater`` (``zlib.decompressobj`` or ``lzma.LZMADecompressor``)
    ``INFLATE_STEP`` bytes at a time, taking at most ``INFLATE_STEP`` bytes of output a call
    and keeping none: the inflated size when it exceeds ``budget`` (counting stops there),
    else None. Raises the codec's error on broken data."""
    view, total = memoryview(data), 0
    for start in range(0, len(view), INFLATE_STEP):
        pending: Any = view[start : start + INFLATE_STEP]
        while True:
            out = inflater.decompress(pending, INFLATE_STEP)
            total += len(out)
            if total > budget:
                return total
            if inflater.eof:
                return None
            if isinstance(inflater, lzma.LZMADecompressor):  # it keeps unused input itself
                pending, more = b"", not inflater.needs_input
            else:  # zlib: input left, or output stopped at the step and may continue
                pending = inflater.unconsumed_tail
                more = bool(pending) or len(out) == INFLATE_STEP
            if not more:
                break
    return None


# --------------------------------------------------------------------------------------- PNG
PNG_MAX_CHUNK = 2**31 - 1  # the PNG specification's largest chunk length


def png_chunks(data: bytes | memoryview) -> Iterator[tuple[bytes, int, int]]:
    """``(type, offset, length)`` of a PNG's chunks after the signature, up to and including
    IEND (or the last whole chunk header); ``offset`` is where the chunk's length field is."""
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        yield ctype, pos, length
        if ctype == b"IEND":
            return
        pos += 12 + length


def png_chunk_problem(data: bytes | memoryview) -> str | None:
    """Walk a PNG's chunks up to IEND: every chunk's length must fit in what is left of the
    file (OpenCV's libpng allocated the 4 GB a 172-byte file's tEXt chunk claimed)."""
    for ctype, pos, length in png_chunks(data):
        left = len(data) - pos - 8  # after this chunk's length and type
        if length > PNG_MAX_CHUNK or length > left:
            name = f"'{ctype.decode()}'" if ctype.isalpha() else f"of type 0x{ctype.hex()}"
            return (f"truncated or corrupt PNG: chunk {name} at byte {pos} claims {length} "
                    f"bytes, more than the {left} left in the file")
    return None


# -------------------------------------------------------------------------------------- JPEG
MAX_JPEG_SCANS = 100  # a progressive JPEG has 6-10 scans (libjpeg), rarely more than 20.
# libjpeg works through the whole image for each: at 6000 x 6000 px, 490 repeats of a scan of
# a few hundred bytes took 1.4-4.9 s, of a 100 kB DC scan 7.5 s (libjpeg-turbo's fuzzers stop
# at 500 scans); 100 keeps the worst case near a second or two


def jpeg_scan_problem(data: bytes | memoryview, max_scans: int | None = None) -> str | None:
    """Count a JPEG's scans (SOS markers) up to EOI: libjpeg works through the whole image for
    each scan, so 30 000 repeats of a 442-byte scan took 83 s; more than ``max_scans``
    (default ``MAX_JPEG_SCANS``) is refused, as is a file of more marker segments than a JPEG
    has (``datamodules.jpeg_markers``: its walk skips the entropy-coded data after each SOS)."""
    max_scans = MAX_JPEG_SCANS if max_scans is None else max_scans
    scans = 0
    try:
        for segment in jpeg_segments(data, through_scans=True):
            if segment.marker == SOS:
                scans += 1
                if scans > max_scans:
                    return (f"JPEG with more than {max_scans} scans (a progressive JPEG has "
                            "about 10; each scan is decoded over the whole image)")
    except JpegSegmentError as err:
        return str(err)
    return None


# -------------------------------------------------------------------------------------- TIFF
MAX_TIFF_SEGMENTS = 1_000_000  # 16 x 16 px tiles (the smallest the specification allows)
# cover 40 megapixels in 160 000; one strip per row, at most a few 10 000 strips
INFLATING_TIFF_CODECS = {8: "Deflate", 32946: "Deflate", 50013: "Deflate", 34925: "LZMA"}
SEGMENT_SLACK = 64 * 1024  # a strip may inflate to twice its size plus this


def tiff_segment_problem(page: Any, limit: int) -> str | None:
    """The strip/tile geometry of a tifffile page, from its tags: a tile may hold at most
    ``limit`` pixels and ``BYTES_PER_PIXEL`` bytes a pixel of it (tifffile decodes a whole
    tile, and a 64 x 64 px TIFF declared 32768 x 32768 px tiles: 4 GB), and there may be at
    most ``MAX_TIFF_SEGMENTS`` strips or tiles."""
    n_segments = len(getattr(page, "dataoffsets", ()) or ())
    if n_segments > MAX_TIFF_SEGMENTS:
        return (f"TIFF of {n_segments} strips or tiles (at most {MAX_TIFF_SEGMENTS} expected: "
                "one radiograph)")
    if not getattr(page, "is_tiled", False):
        return None  # a strip is cut to the image's width and length, checked as the image
    tw, tl, td = (int(getattr(page, k, 1) or 1) for k in ("tilewidth", "tilelength",
                                                           "tiledepth"))
    spp = int(getattr(page, "samplesperpixel", 1) or 1)
    bits = int(getattr(page, "bitspersample", 8) or 8)
    if tw * tl * td > limit or tw * tl * td * spp * bits > 8 * BYTES_PER_PIXEL * limit:
        return (f"TIFF tiles of {tw} x {tl} px{f' x {td}' if td > 1 else ''} x {spp} samples "
                f"x {bits} bits exceed the limit of {limit / 1e6:g} megapixels a tile (set "
                "KNEEPLAN_MAX_PIXELS to raise it)")
    return None


def _segment_bytes(page: Any) -> int:
    """Bytes one strip or tile of ``page`` decodes to (a full strip of RowsPerStrip rows; the
    last one may be shorter)."""
    contig = int(getattr(page, "planarconfig", 1) or 1) == 1
    spp = int(getattr(page, "samplesperpixel", 1) or 1) if contig else 1
    bits = int(getattr(page, "bitspersample", 8) or 8)
    if getattr(page, "is_tiled", False):
        width, rows = int(page.tilewidth), int(page.tilelength) * int(page.tiledepth or 1)
    else:
        width = int(page.imagewidth)
        rows = min(int(page.rowsperstrip or page.imagelength), int(page.imagelength))
    return rows * ((width * spp * bits + 7) // 8)


def tiff_inflate_problem(path: Path, page: Any) -> str | None:
    """For a Deflate or LZMA compressed page (what tifffile inflates itself, all at once and
    unbounded: one 2 MB strip of a 64 x 64 px TIFF inflated to 2 GB), inflate each strip or
    tile with a bounded budget, keeping nothing: refused when one inflates to more than twice
    its size (plus ``SEGMENT_SLACK``). Broken data is left to the decoder."""
    compression = int(getattr(page, "compression", 1) or 1)
    if compression not in INFLATING_TIFF_CODECS:
        return None
    need = _segment_bytes(page)
    budget = 2 * need + SEGMENT_SLACK
    segments = list(zip(page.dataoffsets, page.databytecounts, strict=False))
    kind = "tile" if getattr(page, "is_tiled", False) else "strip"
    with path.open("rb") as fh:
        for i, (offset, count) in enumerate(segments):
            if not count:
                continue
            fh.seek(offset)
            data = fh.read(count)
            inflater = zlib.decompressobj() if compression != 34925 else lzma.LZMADecompressor()
            try:
                over = _inflated_over(inflater, data, budget)
            except (zlib.error, lzma.LZMAError):
                return None  # broken: tifffile raises, and OpenCV's libtiff has a go
            if over is not None:
                return (f"TIFF {kind} {i + 1} of {len(segments)} inflates to more than "
                        f"{budget} bytes, though it holds {need} ("
                        f"{INFLATING_TIFF_CODECS[compression]} decompression bomb)")
    return None


JPEG_TIFF_CODECS = {6: "old-style JPEG", 7: "JPEG", 34892: "lossy JPEG"}


def tiff_jpeg_problem(data: bytes | memoryview, page: Any) -> str | None:
    """For a JPEG compressed page of a TIFF held in ``data`` (OpenCV's libtiff decodes each
    strip or tile as a JPEG stream, each scan over the whole strip or tile), every strip or
    tile, and an old-style JPEG's interchange stream (tags 513/514), may have at most
    ``MAX_JPEG_SCANS`` scans (``jpeg_scan_problem``). Slices of ``data``, nothing copied."""
    compression = int(getattr(page, "compression", 1) or 1)
    if compression not in JPEG_TIFF_CODECS:
        return None
    view = memoryview(data)
    streams = [(f"strip {i + 1} of {{n}}", offset, count) for i, (offset, count) in
               enumerate(zip(page.dataoffsets, page.databytecounts, strict=False))]
    if getattr(page, "is_tiled", False):
        streams = [(name.replace("strip", "tile"), o, c) for name, o, c in streams]
    tags = getattr(page, "tags", {})
    if compression == 6 and 513 in tags:  # JPEGInterchangeFormat(Length)
        length = tags[514].value if 514 in tags else len(view)
        streams.append(("JPEG interchange stream", int(tags[513].value), int(length)))
    n = len(page.dataoffsets)
    for name, offset, count in streams:
        segment = view[int(offset) : int(offset) + int(count)]
        if bytes(segment[:2]) != b"\xff\xd8":
            continue
        problem = jpeg_scan_problem(segment)
        if problem is not None:
            return f"TIFF {name.format(n=n)}: {problem}"
    return None


# ------------------------------------------------------------------------------------- DICOM
MAX_DICOM_ELEMENTS = 100_000  # a radiograph's header has a few hundred; pydicom spends ~9 us
# and ~340 bytes on each (7 million empty ones in an 84 MB file took 62 s and 2.4 GB)
MAX_DICOM_DEPTH = 64  # sequences in sequences; real files nest a handful deep
DEFLATED_TS = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE_TS = "1.2.840.10008.1.2"
EXPLICIT_BE_TS = "1.2.840.10008.1.2.2"
UNDEFINED = 0xFFFFFFFF
_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                 b"TM UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
MAX_DICOM_VALUE = 8 * 1024  # bytes of a value the reader or pydicom's pixel pipeline turns
# into Python numbers or text (a window, a spacing, a rescale: a real one is a few bytes).
# 1 million "1" values in WindowCenter (2 MB) took 2.3 s and 400 MB to convert
MAX_DICOM_LUT = 256 * 1024  # LUT Data: at most 65536 entries of 16 bits (128 kB)
_OVERLAY_BIT_POSITIONS = {(g, 0x0102) for g in range(0x6000, 0x6020, 2)}
_CONVERTED = {  # element tag: a bound on its value's length
    **{(0x0028, e): MAX_DICOM_VALUE for e in range(0x0000, 0x1200)},  # image pixel, window,
    **{(0x0028, e): MAX_DICOM_VALUE for e in (0x3002, 0x3003, 0x3004)},  # rescale, LUTs
    **{t: MAX_DICOM_VALUE for t in ((0x0018, 0x1164), (0x0018, 0x1114), (0x2050, 0x0020))},
    **dict.fromkeys(_OVERLAY_BIT_POSITIONS, MAX_DICOM_VALUE),
    (0x0028, 0x3006): MAX_DICOM_LUT,
}


def _tag_name(group: int, elem: int) -> str:
    """"WindowCenter (0028,1050)", or the tag alone."""
    try:
        from pydicom.datadict import keyword_for_tag

        keyword = keyword_for_tag(group << 16 | elem)
    except Exception:  # (no pydicom: the number says it)
        keyword = ""
    return f"{keyword + ' ' if keyword else ''}({group:04X},{elem:04X})"


def dicom_problem(path: Path, limit: int) -> str | None:
    """Walk a DICOM file's element headers before pydicom parses them: more than
    ``MAX_DICOM_ELEMENTS`` data elements and items (nested ones included) or sequences nested
    more than ``MAX_DICOM_DEPTH`` deep are refused. A Deflated Explicit VR Little Endian
    dataset (pydicom inflates it whole, unbounded: a 2.4 MB file held a 2.5 GB element) is
    first inflated while counting, and refused above ``image_bytes_cap(limit)`` bytes, what
    an uncompressed file may hold. Each frame of encapsulated (JPEG, JPEG-LS, JPEG 2000, RLE)
    pixel data must agree with the dataset's Rows x Columns (``encapsulated_problem``)."""
    with path.open("rb") as fh:
        if fh.seek(0, 2) < 132:
            return None
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[128:132] != b"DICM":
                return None  # pydicom refuses a file without the preamble itself
            start, syntax = _file_meta(buf)
            if syntax != DEFLATED_TS:
                walk = _Walk(buf, syntax == IMPLICIT_LE_TS, syntax != EXPLICIT_BE_TS,
                             syntax=syntax, limit=limit)
                return walk.problem(start)
            budget, compressed = image_bytes_cap(limit), buf[start:]
            try:
                if _inflated_over(zlib.decompressobj(-zlib.MAX_WBITS), compressed, budget):
                    return (f"deflated DICOM dataset inflates to more than {budget / 1024**2:.0f}"
                            f" MB, more than an image within the limit of {limit / 1e6:g} "
                            "megapixels can need (set KNEEPLAN_MAX_PIXELS to raise it)")
                dataset = zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed)
            except zlib.error:
                return None  # pydicom reports the broken stream
    return _Walk(dataset, False, True).problem(0)


def _file_meta(buf: Any) -> tuple[int, str | None]:
    """(offset after the group 2 file meta elements, TransferSyntaxUID or None); group 2 is
    always Explicit VR Little Endian."""
    pos, syntax = 132, None
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        vr = bytes(buf[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            (length,), head = struct.unpack_from("<I", buf, pos + 8), 12
        else:
            (length,), head = struct.unpack_from("<H", buf, pos + 6), 8
        if length == UNDEFINED:
            break
        if elem == 0x0010:
            raw = bytes(buf[pos + head : pos + head + length])
            syntax = raw.rstrip(b"\x00 ").decode("ascii", "replace")
        pos += head + length
    return pos, syntax


class _Lost(Exception):
    """The walk cannot follow the file's structure (pydicom meets the same damage)."""


class _Refused(Exception):
    """The file holds more structure than a radiograph can; the message says what."""


class _Walk:
    """One walk over a DICOM dataset's elements, read as pydicom reads them: explicit VR that
    switches to implicit where the VR bytes are not letters, values of defined length skipped
    (a value running past the end of the file is cut there), sequences and items followed
    (also those of defined length, which pydicom parses when they are first used). It stops,
    without a verdict, only where the data ends."""

    def __init__(self, buf: Any, implicit: bool, little: bool, syntax: str | None = None,
                 limit: int | None = None) -> None:
        self.buf, self.implicit, self.order = buf, implicit, "<" if little else ">"
        self.item = struct.pack(self.order + "HH", 0xFFFE, 0xE000)
        self.seq_end = struct.pack(self.order + "HH", 0xFFFE, 0xE0DD)
        self.count = 0
        self.syntax, self.limit = syntax, limit
        self.values: dict[tuple[int, int], int] = {}  # top-level FRAME_TAGS, as numbers
        self.spans: list[tuple[int, int]] | None = None  # encapsulated pixel data's items
        self.offset_table: dict[int, tuple[int, int]] = {}  # Extended Offset Table (7FE0,0001)
        # and its Lengths (7FE0,0002): element number -> (value offset, value length)

    def problem(self, pos: int) -> str | None:
        """What is wrong with the dataset from ``pos`` on, or None."""
        try:
            self.dataset(pos, len(self.buf), 0)
        except _Lost:
            pass  # (pydicom may still reach pixel data read before the damage)
        except _Refused as why:
            return str(why)
        if self.spans is None or self.limit is None:
            return None
        return encapsulated_problem(self.buf, self.spans, self.syntax, self.values,
                                    self.limit, self.offset_table)

    def record(self, group: int, elem: int, vr: bytes, pos: int, length: int) -> None:
        """Keep a top-level Rows, Columns, SamplesPerPixel, BitsAllocated or NumberOfFrames
        as a number (US, or the digits pydicom reads from a text VR), and where the Extended
        Offset Table's values lie."""
        if (group, elem) in ((0x7FE0, 0x0001), (0x7FE0, 0x0002)) and length != UNDEFINED:
            self.offset_table[elem] = (pos, length)
            return
        if (group, elem) not in FRAME_TAGS or length == UNDEFINED or length > 64:
            return
        raw = bytes(self.buf[pos : pos + length])
        binary = vr in (b"US", b"SS", b"UL", b"SL") or (
            vr not in TEXT_VRS and (group, elem) != (0x0028, 0x0008))  # (that one is IS)
        if binary and len(raw) in (2, 4):
            self.values[(group, elem)] = struct.unpack(self.order + "HI"[len(raw) // 4],
                                                       raw)[0]
        else:
            digits = raw.split(b"\\")[0].strip(b"\x00 ")
            try:
                self.values[(group, elem)] = int(float(digits))
            except (ValueError, OverflowError):
                self.values.pop((group, elem), None)

    def header(self, pos: int) -> tuple[int, int, bytes, int, int]:
        """(group, element, VR or b"" when implicit, value length, header bytes) at ``pos``."""
        buf, order = self.buf, self.order
        if pos + 8 > len(buf):
            raise _Lost
        self.count += 1
        if self.count > MAX_DICOM_ELEMENTS:
            raise _Refused(f"DICOM with more than {MAX_DICOM_ELEMENTS} data elements (a "
                           "radiograph's header has a few hundred)")
        group, elem = struct.unpack_from(order + "HH", buf, pos)
        vr = b"" if self.implicit or group == 0xFFFE else bytes(buf[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                raise _Lost
            return group, elem, vr, struct.unpack_from(order + "I", buf, pos + 8)[0], 12
        if vr and b"AA" <= vr <= b"ZZ":  # a VR, known or not (pydicom: 2-byte length)
            return group, elem, vr, struct.unpack_from(order + "H", buf, pos + 6)[0], 8
        return group, elem, b"", struct.unpack_from(order + "I", buf, pos + 4)[0], 8

    def dataset(self, pos: int, stop: int, depth: int) -> int:
        """Walk the elements from ``pos`` to ``stop`` or an item delimiter; the end."""
        size = len(self.buf)
        while pos < stop:
            group, elem, vr, length, head = self.header(pos)
            pos += head
            if (group, elem) == (0xFFFE, 0xE00D):  # item delimiter: pydicom ends here too
                return pos
            bound = _CONVERTED.get((group, elem))
            if bound is not None and length != UNDEFINED and min(length, size - pos) > bound:
                raise _Refused(f"DICOM {_tag_name(group, elem)} holds {length} bytes, more than "
                               f"the {bound} any real value needs (a broken or hostile file)")
            if depth == 0 and (group, elem) == (0x7FE0, 0x0010) and length == UNDEFINED:
                pos = self.fragments(pos)  # encapsulated (compressed) pixel data
                continue
            if depth == 0 and (group, elem) == (0x7FE0, 0x0010) and self.syntax in \
                    ENCAPSULATED and self.buf[pos : pos + 4] == self.item:
                self.fragments(pos, min(pos + length, size))  # (pydicom decodes it too)
                pos += length
                continue
            if depth == 0:
                self.record(group, elem, vr, pos, length)
            starts_items = self.buf[pos : pos + 4] == self.item
            is_sequence = vr == b"SQ" or (vr in (b"", b"UN") and starts_items
                                          and group != 0x7FE0)
            if length == UNDEFINED:
                if is_sequence or vr == b"UN":  # pydicom reads UN of undefined length as SQ
                    pos = self.sequence(pos, None, depth + 1)
                    continue
                found = self.buf.find(self.seq_end, pos)  # a value up to a sequence
                if found < 0:  # delimiter (encapsulated pixel data)
                    raise _Lost
                pos = found + 8
                continue
            if is_sequence:  # (pydicom parses one of defined length when it is first used)
                self.sequence(pos, min(pos + length, size), depth + 1)
            pos += length
        return pos

    def sequence(self, pos: int, stop: int | None, depth: int) -> int:
        """Walk the items of a sequence from ``pos`` (to ``stop``, or to its delimiter when
        None); the end. Any tag other than the sequence delimiter starts an item, as in
        pydicom."""
        if depth > MAX_DICOM_DEPTH:
            raise _Refused(f"DICOM sequences nested more than {MAX_DICOM_DEPTH} deep")
        size = len(self.buf)
        while stop is None or pos < stop:
            group, elem, _, length, head = self.header(pos)
            pos += head
            if (group, elem) == (0xFFFE, 0xE0DD):
                return pos
            if length == UNDEFINED:
                pos = self.dataset(pos, size, depth)
            else:
                self.dataset(pos, min(pos + length, size), depth)
                pos += length
        return pos

    def fragments(self, pos: int, stop: int | None = None) -> int:
        """Walk the items of encapsulated Pixel Data from ``pos`` (the Basic Offset Table, then
        the fragments) to the sequence delimiter (or ``stop``, for a value of defined length
        under a compressed transfer syntax); the end. The fragments of each frame (a new
        one starts with a JPEG SOI) are joined as pydicom joins them, and a JPEG frame may have
        at most ``MAX_JPEG_SCANS`` scans (``jpeg_scan_problem``): pydicom hands it to
        libjpeg (Pillow, GDCM), which decodes each scan over the whole frame."""
        buf = self.buf
        size = len(buf) if stop is None else stop
        spans: list[tuple[int, int]] = []
        self.spans = spans  # (filled as it goes: checked even when the walk is lost later)
        while pos < size:
            group, elem, _, length, head = self.header(pos)
            pos += head
            if (group, elem) == (0xFFFE, 0xE0DD):
                break
            if (group, elem) != (0xFFFE, 0xE000) or length == UNDEFINED:
                raise _Lost  # pydicom cannot follow it either
            end = min(pos + length, size)
            spans.append((pos, end))
            pos = end
        frames: list[list[tuple[int, int]]] = []
        for start, end in spans[1:]:  # (the first item is the Basic Offset Table)
            if not frames or buf[start : start + 2] == b"\xff\xd8":
                frames.append([])
            frames[-1].append((start, end))
        for i, frame in enumerate(frames):
            if buf[frame[0][0] : frame[0][0] + 2] != b"\xff\xd8":
                continue
            problem = jpeg_scan_problem(b"".join(buf[a:b] for a, b in frame))
            if problem is not None:
                where = f" frame {i + 1} of {len(frames)}" if len(frames) > 1 else ""
                raise _Refused(f"DICOM pixel data{where}: {problem}")
        return pos


# ------------------------------------------------------------- DICOM encapsulated pixel data
