"""Bounds on a DICOM's encapsulated (compressed) pixel data, read before any frame is decoded.

GDCM, pylibjpeg, Pillow and pydicom's RLE decoder decode a whole frame before its size is
compared with Rows x Columns: a 2.4 kB DICOM declaring 64 x 64 whose JPEG 2000 frame is
13000 x 13000 cost 1.1 GB, and an 80 MB RLE file 5.2 GB and 46 s. So each frame's own header
(JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ or JP2 ``ihdr``, the RLE segment table) must agree with
the dataset and the pixel limit. ``datamodules.decode_guards`` walks the file and calls
``encapsulated_problem``; this module knows nothing of the walk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from datamodules.jpeg_markers import EOI, SOS, STANDALONE, JpegSegmentError, jpeg_segments

MAX_LISTED_FRAMES = 100_000  # an Extended Offset Table's frames (one radiograph has one)

FRAME_TAGS = {(0x0028, 0x0010): "Rows", (0x0028, 0x0011): "Columns",
               (0x0028, 0x0002): "SamplesPerPixel", (0x0028, 0x0100): "BitsAllocated",
               (0x0028, 0x0008): "NumberOfFrames"}
ROWS, COLUMNS, SAMPLES, BITS, N_FRAMES = FRAME_TAGS
_JPEG_UID = "1.2.840.10008.1.2.4."
JPEG_SYNTAXES = frozenset(_JPEG_UID + n for n in ("50", "51", "57", "70", "80", "81"))
J2K_SYNTAXES = frozenset(_JPEG_UID + n for n in ("90", "91", "92", "93", "201", "202", "203"))
RLE_SYNTAX = "1.2.840.10008.1.2.5"
ENCAPSULATED = JPEG_SYNTAXES | J2K_SYNTAXES | {RLE_SYNTAX}
TEXT_VRS = frozenset(b"AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}  # SOF0-15, SOF55
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_JP2_BOXES = 1000  # a JP2 file has a handful
RLE_SLACK = 16 * 1024**2  # RLE segments are counted through (no output kept) when they could
# decode to more than this beyond Rows x Columns bytes each


def jpeg_frame_sizes(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(width, height, components, SOF marker, sample precision in bits) of each frame
    header of a JPEG or JPEG-LS stream before its first scan, reached as libjpeg reaches them
    (segments by their lengths, other bytes skipped up to the next marker). libjpeg refuses a
    second one, but Pillow sizes the image by the last one; empty when there is none. Raises
    ``JpegSegmentError`` for more marker segments than a JPEG has."""
    sizes: list[tuple[int, int, int, int, int]] = []
    if data[:2] != b"\xff\xd8":
        return sizes
    for marker, pos, length in jpeg_segments(data, resync=True):
        if marker in (SOS, EOI):  # the decoders stop reading headers here
            return sizes
        if marker in _SOF_MARKERS and pos + 8 <= len(data):
            _, precision, height, width, components = struct.unpack_from(">HBHHB", data, pos)
            sizes.append((width, height, components, marker, precision))
        if marker not in STANDALONE and length < 2:
            return sizes
    return sizes


def j2k_frame_size(data: bytes) -> tuple[int, int, int, bool] | None:
    """(width, height, components, whether the marker's length fits its components) from a
    JPEG 2000 codestream's SIZ marker, which follows its SOC marker; None when it does not
    start so or is cut short. (OpenJPEG refuses a SIZ whose length does not fit.)"""
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 42:
        return None
    (length,) = struct.unpack_from(">H", data, 4)
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", data, 8)
    (components,) = struct.unpack_from(">H", data, 40)
    return max(xsiz - x0, 0), max(ysiz - y0, 0), components, length == 38 + 3 * components


# JPEG processes with the DCT (lossy): baseline, extended, progressive, their differential and
# arithmetic-coded forms. SOF3/7/11/15 are lossless; SOF55 is JPEG-LS (lossy when NEAR > 0).
DCT_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC5, 0xC6, 0xC9, 0xCA, 0xCD, 0xCE})
JPEG_LS_SOF = 0xF7
J2K_COD, J2K_SOT = 0x52, 0x90
MAX_J2K_HEADER_SEGMENTS = 256  # a main header has a handful (SIZ, COD, QCD, COM, ...)


def frame_lossy(frame: bytes) -> bool:
    """Whether a compressed frame's own header says it was coded lossy: a DCT JPEG process, a
    JPEG-LS scan with NEAR > 0, or a JPEG 2000 codestream with the irreversible 9-7 wavelet
    (COD transformation 0). A transfer syntax may say "lossless" over such data; the decoder
    goes by the header. False for anything unreadable (the decoder judges that)."""
    try:
        if frame[:2] == b"\xff\xd8":
            return _jpeg_lossy(frame)
        if frame[:12] == JP2_SIGNATURE:
            for kind, start, end in _jp2_boxes(frame, 0, len(frame)):
                if kind == b"jp2c":
                    return _j2k_lossy(frame[start:end])
            return False
        return _j2k_lossy(frame)
    except (JpegSegmentError, struct.error, IndexError):
        return False


def _jpeg_lossy(data: bytes) -> bool:
    """A JPEG or JPEG-LS stream's frame header (and, for JPEG-LS, first scan's NEAR)."""
    jpeg_ls = False
    for marker, pos, _length in jpeg_segments(data, resync=True):
        if marker in DCT_SOF_MARKERS:
            return True
        jpeg_ls = jpeg_ls or marker == JPEG_LS_SOF
        if marker == SOS:  # Ls, Ns, Ns x (component, table), NEAR
            return jpeg_ls and data[pos + 3 + 2 * data[pos + 2]] > 0
        if marker == EOI:
            return False
    return False


def _j2k_lossy(data: bytes) -> bool:
    """A JPEG 2000 codestream's main-header COD marker: transformation 0 is the 9-7 wavelet."""
    if data[:4] != b"\xff\x4f\xff\x51":  # SOC, SIZ
        return False
    pos = 2
    for _ in range(MAX_J2K_HEADER_SEGMENTS):
        if data[pos] != 0xFF or data[pos + 1] == J2K_SOT:
            return False
        if data[pos + 1] == J2K_COD:  # marker, Lcod, Scod, SGcod (4), levels, xcb, ycb, style,
            return data[pos + 13] == 0  # transformation
        (length,) = struct.unpack_from(">H", data, pos + 2)
        pos += 2 + length
    return False


def _jp2_boxes(data: bytes, pos: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, content start, content end) of the JP2 boxes from ``pos`` to ``end``."""
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                return
            (size,), head = struct.unpack_from(">Q", data, pos + 8), 16
        elif size == 0:  # up to the end
            size = end - pos
        if size < head:
            return
        yield kind, pos + head, min(pos + size, end)
        pos += size


def jp2_frame_sizes(data: bytes) -> list[tuple[str, int, int, int]] | None:
    """[(where, width, height, components)] of a JP2 file's image header boxes (ihdr: Pillow
    sizes the image by them, wherever they are) and its first codestream (jp2c, from its SIZ
    marker); None when it has no readable codestream or more than ``MAX_JP2_BOXES`` boxes."""
    sizes: list[tuple[str, int, int, int]] = []
    codestream = False
    for n, (kind, start, end) in enumerate(_jp2_boxes(data, 0, len(data))):
        if n >= MAX_JP2_BOXES:
            return None
        if kind == b"jp2h":
            for inner, a, b in _jp2_boxes(data, start, end):
                if inner == b"ihdr" and b - a >= 10:
                    height, width, components = struct.unpack_from(">IIH", data, a)
                    sizes.append(("JPEG 2000 frame (JP2 header)", width, height, components))
        elif kind == b"jp2c" and not codestream:
            size = j2k_frame_size(data[start : start + 64])
            if size is None:
                return None
            sizes.append(("JPEG 2000 frame", *size[:3]))
            codestream = True
    return sizes if codestream else None


def _size_problem(kind: str, width: int, height: int, components: int,
                  values: dict[tuple[int, int], int], limit: int) -> str | None:
    """A frame's own size against the pixel limit and the dataset's Columns x Rows (and
    its component count against SamplesPerPixel)."""
    if width * height > limit:
        return (f"{kind}: {width} x {height} px exceeds the limit of {limit / 1e6:g} "
                "megapixels (set KNEEPLAN_MAX_PIXELS to raise it); refused before decoding")
    rows, cols, samples = values.get(ROWS), values.get(COLUMNS), values.get(SAMPLES, 1)
    if rows is not None and cols is not None and (width, height) != (cols, rows):
        return (f"{kind}: {width} x {height} px, but the dataset's Columns x Rows say "
                f"{cols} x {rows} (a decompression bomb or a broken file); refused before "
                "decoding")
    if components != samples:
        return (f"{kind}: {components} components, but the dataset's SamplesPerPixel "
                f"says {samples} (a broken or hostile file); refused before decoding")
    return None


def _frame_kind(marker: int) -> str:
    """How a frame is named in a message: JPEG-LS by its SOF55 marker, else JPEG."""
    return "JPEG-LS frame" if marker == 0xF7 else "JPEG frame"


def jpeg_precision_problem(frame: bytes, allocated: int | None,
                           stored: int | None) -> str | None:
    """Why a JPEG or JPEG-LS ``frame`` could not be decoded into the dataset's pixel cells:
    its samples (its SOF's precision: up to 8 bits decode to bytes, more to 16-bit words) do
    not fit the ``allocated`` bits (an 8-bit JPEG in a 16-bit dataset: pydicom failed on the
    buffer's size); None when they do, or it has no frame header. Asked after a decoder has
    failed: a decoder may still cope with a mismatch, so it is no reason to refuse first."""
    try:
        sizes = jpeg_frame_sizes(frame)
    except JpegSegmentError:
        return None  # refused as such by codestream_problem
    if not sizes or allocated not in (8, 16):
        return None
    _, _, _, marker, precision = sizes[0]
    if not 2 <= precision <= 16 or (precision > 8) == (allocated > 8):
        return None
    kind = _frame_kind(marker)
    declared = f"BitsAllocated {allocated}" + (f", BitsStored {stored}" if stored else "")
    return (f"{kind} of {precision}-bit samples, but the dataset declares {declared}: the "
            "compressed frame does not match the declared bits (a broken file)")


def codestream_problem(data: bytes, values: dict[tuple[int, int], int],
                       limit: int) -> str | None:
    """A JPEG, JPEG-LS or JPEG 2000 (J2K codestream or JP2 file) frame whose header is
    missing, or whose size differs from the dataset's (``_size_problem``)."""
    if data[:2] == b"\xff\xd8":
        try:
            sizes = jpeg_frame_sizes(data)
        except JpegSegmentError as err:
            return str(err)
        if not sizes:
            return "JPEG frame without a frame header (SOF) before its first scan"
        for width, height, components, marker, _ in sizes:
            kind = _frame_kind(marker)
            problem = _size_problem(kind, width, height, components, values, limit)
            if problem is not None:
                return problem
        return None
    if data[:2] == b"\xff\x4f":
        j2k = j2k_frame_size(data)
        if j2k is None:
            return "JPEG 2000 frame without a readable SIZ marker after its SOC marker"
        width, height, components, well_formed = j2k
        if not well_formed and width * height <= limit:
            return None  # OpenJPEG refuses the marker at once, with its own message
        return _size_problem("JPEG 2000 frame", width, height, components, values, limit)
    if data[:12] == JP2_SIGNATURE:
        sizes = jp2_frame_sizes(data)
        if sizes is None:
            return (f"JP2 frame without a readable codestream (jp2c box with a SIZ marker) "
                    f"in its first {MAX_JP2_BOXES} boxes")
        for kind, *size in sizes:
            problem = _size_problem(kind, *size, values, limit)
            if problem is not None:
                return problem
        return None
    return (f"frame starts with 0x{data[:4].hex()}, neither a JPEG nor a JPEG 2000 header "
            "(a broken or hostile file)")


def _rle_decoded_over(segment: bytes, need: int) -> bool:
    """Whether an RLE (PackBits) segment decodes to more than ``need`` bytes, counted run by
    run as pydicom decodes it, keeping nothing and stopping once over."""
    pos, total, end = 0, 0, len(segment)
    while pos < end:
        header = segment[pos]
        if header < 128:  # literal run of header + 1 bytes (cut at the end)
            total += min(header + 1, end - pos - 1)
            pos += header + 2
        elif header > 128:  # the next byte 257 - header times
            total += 257 - header if pos + 1 < end else 0
            pos += 2
        else:  # 128: no operation
            pos += 1
        if total > need:
            return True
    return False


def rle_problem(head: bytes, frame_len: int, values: dict[tuple[int, int], int],
                whole: Any) -> str | None:
    """An RLE Lossless frame's header (``head``, its first bytes, of ``frame_len``): 1 to 15
    segments, as many as SamplesPerPixel x BitsAllocated / 8, at increasing offsets inside
    the frame. Each segment decodes to exactly Rows x Columns bytes (pydicom's decoder has no
    bound: a 20 MB segment of 64 x 64 px decoded to 1.3 GB): one longer than twice that (the
    most any encoding of it takes: a literal run of one byte costs two) is refused; one that
    could still decode to more than ``RLE_SLACK`` bytes over is counted through
    (``_rle_decoded_over``; ``whole()`` gives the frame's bytes)."""
    rows, cols = values.get(ROWS), values.get(COLUMNS)
    if rows is None or cols is None:
        return None  # pydicom cannot decode it without them
    if frame_len < 64:
        return f"RLE frame of {frame_len} bytes, shorter than its 64-byte header"
    n_segments, *offsets = struct.unpack_from("<16I", head)
    if not 1 <= n_segments <= 15:
        return f"RLE header declares {n_segments} segments (1 to 15 are possible)"
    samples, bits = values.get(SAMPLES, 1), values.get(BITS)
    if bits is not None and bits % 8 == 0 and n_segments != samples * bits // 8:
        return (f"RLE header declares {n_segments} segments, but SamplesPerPixel x "
                f"BitsAllocated / 8 = {samples} x {bits} / 8 say {samples * bits // 8}")
    bounds = [*offsets[:n_segments], frame_len]
    if bounds[0] < 64 or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        return (f"RLE segment offsets {offsets[:n_segments]} are not increasing from byte 64 "
                f"within the frame of {frame_len} bytes")
    need = rows * cols
    most = 2 * need + 2  # (+ 2: an odd segment is padded, and may end on a run header)
    lengths = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    for i, length in enumerate(lengths):
        if length > most:
            return (f"RLE segment {i + 1} of {n_segments} holds {length} bytes, more than the "
                    f"{most} any encoding of its {cols} x {rows} bytes takes: it could decode to "
                    f"{64 * length} bytes (an RLE expansion bomb); refused before decoding")
    if all(64 * length <= need + RLE_SLACK for length in lengths):
        return None
    data = whole()
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        if 64 * (b - a) > need + RLE_SLACK and _rle_decoded_over(data[a:b], need):
            return (f"RLE segment {i + 1} of {n_segments} decodes to more than the {need} "
                    f"bytes of its {cols} x {rows} pixels (an RLE expansion bomb); refused "
                    "before decoding")
    return None


def _frames(buf: Any, spans: list[tuple[int, int]], n_frames: int,
            extended: dict[int, tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The items (``spans``: the Basic Offset Table, then the fragments) of each frame, as
    pydicom's ``generate_fragmented_frames`` groups them: by the Extended Offset Table, else
    the Basic Offset Table, else one fragment a frame, else all in one frame, else up to each
    fragment that ends with a JPEG EOI marker."""
    if not spans:
        return []
    (bot_start, bot_end), fragments = spans[0], spans[1:]
    if not fragments:
        return []
    if 1 in extended and 2 in extended:
        (o_pos, o_len), (l_pos, l_len) = extended[1], extended[2]
        n = min(o_len, len(buf) - o_pos, l_len, len(buf) - l_pos) // 8
        if n and o_len == l_len:
            offsets = struct.unpack_from(f"<{n}Q", buf, o_pos)
            lengths = struct.unpack_from(f"<{n}Q", buf, l_pos)
            first = bot_end + 8  # after the first fragment's item tag and length
            return [[(min(first + o, len(buf)), min(first + o + n_bytes, len(buf)))]
                    for o, n_bytes in zip(offsets, lengths, strict=False)]
    if (bot_end - bot_start) % 4 == 0 and bot_end > bot_start:
        # (entries past one a fragment change nothing: a frame takes at least one)
        n = min((bot_end - bot_start) // 4, len(fragments) + 1)
        starts = struct.unpack_from(f"<{n}I", buf, bot_start)
        frames: list[list[tuple[int, int]]] = [[]]
        index, offset = 0, 0
        for span in fragments:
            if index < len(starts) - 1 and offset >= starts[index + 1]:
                frames.append([])
                index += 1
            frames[-1].append(span)
            offset += span[1] - span[0] + 8
        return frames
    if len(fragments) == 1 or len(fragments) <= n_frames:
        return [[span] for span in fragments]
    if n_frames <= 1:
        return [fragments]
    frames, current = [], []
    for a, b in fragments:
        current.append((a, b))
        if b"\xff\xd9" in bytes(buf[max(a, b - 10) : b]):
            frames.append(current)
            current = []
    return frames + ([current] if current else [])


def _frame_bytes(buf: Any, frame: list[tuple[int, int]], most: int | None = None) -> bytes:
    """A frame's fragments joined (at most ``most`` bytes of them)."""
    parts, got = [], 0
    for a, b in frame:
        if most is not None:
            b = min(b, a + most - got)
        parts.append(bytes(buf[a:b]))
        got += b - a
        if most is not None and got >= most:
            break
    return b"".join(parts)


def encapsulated_problem(buf: Any, spans: list[tuple[int, int]], syntax: str | None,
                         values: dict[tuple[int, int], int], limit: int,
                         extended: dict[int, tuple[int, int]] | None = None) -> str | None:
    """Before anything is decoded, every frame of encapsulated pixel data (``spans``: its
    items in ``buf``) of a JPEG, JPEG-LS or JPEG 2000 transfer syntax must state its own size
    (``codestream_problem``), and every RLE Lossless frame must have a header that bounds
    what it decodes to (``rle_problem``); other transfer syntaxes are left as they are."""
    if syntax not in JPEG_SYNTAXES and syntax not in J2K_SYNTAXES and syntax != RLE_SYNTAX:
        return None
    extended = extended or {}
    listed = max((length for _, length in extended.values()), default=0) // 8
    if listed > MAX_LISTED_FRAMES:
        return (f"DICOM Extended Offset Table lists {listed} frames (at most "
                f"{MAX_LISTED_FRAMES} expected: one radiograph)")
    frames = _frames(buf, spans, values.get(N_FRAMES) or 1, extended)
    for i, frame in enumerate(frames):
        head = _frame_bytes(buf, frame, 64)  # an RLE header, a J2K SOC and SIZ
        if syntax == RLE_SYNTAX:
            total = sum(b - a for a, b in frame)
            problem = rle_problem(head.ljust(64, b"\x00"), total, values,
                                  lambda f=frame: _frame_bytes(buf, f))
        else:  # (a JPEG's or JP2's headers may be anywhere before its first scan / jp2c)
            data = head if head[:2] == b"\xff\x4f" else _frame_bytes(buf, frame)
            problem = codestream_problem(data, values, limit)
        if problem is not None:
            where = f" frame {i + 1} of {len(frames)}" if len(frames) > 1 else ""
            return f"DICOM pixel data{where}: {problem}"
    return None
