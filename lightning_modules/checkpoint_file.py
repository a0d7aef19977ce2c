"""Reading checkpoints safely, without Lightning: one reader for training, planning and export.

:func:`read_checkpoint` loads a ``.ckpt`` with ``torch.load(weights_only=True)`` (tensors and
plain containers only: a pickled object that would run code is refused, never executed) and
turns every way a file can be wrong (missing, empty, a FIFO, random bytes, truncated, a plain
``state_dict``, non-finite weights, tensors that are not stored values such as broadcast views or
meta tensors, a file or hyper-parameters beyond ``lightning_modules.model_limits``) into one
:class:`CheckpointError` line naming the file.
:func:`check_architecture` compares a checkpoint's ``state_dict`` with a module's. Imports torch
only, so the Lightning-free planning path (``planning.model_io``) uses the same reader as
training (``lightning_modules.checkpoints``).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from datamodules.decoder_messages import short_repr
from lightning_modules.model_limits import check_archive, check_hyper_parameters, read_model_file
from lightning_modules.pickle_scan import pickle_problem

# Lightning pickles the *type* of its hyper-parameter container in some versions; a plain dict
# stands in for it (this names a class, it runs no code) so that weights_only loading accepts it.
_LIGHTNING_TYPES = ("lightning_fabric.utilities.data.AttributeDict",
                    "pytorch_lightning.utilities.parsing.AttributeDict")


# torch.save's pre-1.6 format: a pickle protocol-2 header, then the pickled magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _AttributeDict(dict):
    """Stand-in for Lightning's AttributeDict when unpickling (never instantiated with code)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be used; the message is one line naming the file."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a FileNotFoundError)."""


def _other_model_file(data: bytes) -> str | None:
    """What a file given as a checkpoint is instead, when it is one of the other model files
    a user holds: an ONNX export (protobuf: ir_version, field 1, first; a producer named in
    the first bytes), or a JSON file (an export's description). None: neither."""
    head = data[:256]
    if head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower()):
        return ("an ONNX model (make export's output): give it under its .onnx name, with its "
                ".json beside it")
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file (an export's description? give the .onnx beside it)"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__


def _damaged_member(archive: zipfile.ZipFile) -> str | None:
    """The first archive member whose CRC-32 does not match its data, or None.

    torch.save records a CRC-32 per member but ``torch.load`` does not check it: a flipped byte
    in a weight record (bit rot, an interrupted copy) loaded silently as a slightly different
    network (found by fuzzing checkpoints). Reading the archive once costs ~0.02 s for the quick
    network's 3 MB and is bounded by the file-size limit.
    """
    return archive.testzip()


# the records torch.load reads by name besides ``data/<key>`` (``.data/version`` is the
# reader's own fallback for ``version``); torch's zip reader finds each in any case
_TORCH_RECORDS = ("data.pkl", "version", "byteorder", ".format_version", ".storage_alignment",
                  ".data/version", ".data/serialization_id")
_METHODS = {zipfile.ZIP_DEFLATED: "deflated", zipfile.ZIP_BZIP2: "bzip2",
            zipfile.ZIP_LZMA: "lzma"}


def _directory_shift(data: bytes, archive: zipfile.ZipFile) -> int:
    """How far Python's zipfile moved the central directory from where the archive's end
    record puts it (0 for torch.save's files).

    zipfile takes bytes before an archive as a prefix and shifts every offset by them; torch's
    zip reader (miniz) reads the directory at the recorded offset. A file holding two
    directories was checked as one archive and loaded as the other (sixth fuzz round).
    """
    end = zipfile._EndRecData(io.BytesIO(data))  # the end record ``archive`` was opened with
    return archive.start_dir - end[zipfile._ECD_OFFSET] if end else 0


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The member's name as its bytes in the archive (what torch's zip reader compares)."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def _name_problem(infos: list[zipfile.ZipInfo], top: str) -> str | None:
    """Why the members' names (all in folder ``top``) could make torch's zip reader load
    another member than the one checked, or None.

    torch looks a record up as ``<top>/<name>`` compared byte for byte with ASCII case ignored
    (no other normalisation: ``./``, ``//``, ``\\`` or a leading ``/`` never match), and which
    of two equal names it finds depends on its sorted search, not their order; Python's zipfile
    matches exact names.
    """
    seen: dict[bytes, str] = {}
    for info in infos:
        if (key := _raw_name(info).lower()) in seen:  # (bytes.lower: ASCII only, as torch's)
            return (f"archive members {seen[key][:80]!r} and {info.filename[:80]!r} have the "
                    "same name when case is ignored (torch's zip reader may load either: only "
                    "one is checked)")
        seen[key] = info.filename
    for name in (i.filename for i in infos):
        record = name[len(top) + 1:]
        low = record.lower()
        if (low in _TORCH_RECORDS and record != low
                or low.startswith("data/") and not record.startswith("data/")):
            what = low if low in _TORCH_RECORDS else "data/..."
            return (f"archive member {name[:80]!r} differs only in case from torch's record "
                    f"{top[:40]}/{what} (torch reads it as that record; torch.save writes "
                    "lower case)")
    return None


def _member_problem(data: bytes, archive: zipfile.ZipFile) -> str | None:
    """Why a member's recorded layout is not torch.save's: compressed (torch.save stores every
    member; a deflated 2 MB file unpacked to 1.9 GB of weights, 40 s and 5.4 GB to plan), two
    sizes that differ, or data running past the members into the directory. Reads the local
    headers only, no member's data."""
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            method = _METHODS.get(info.compress_type, f"method {info.compress_type}")
            return (f"compressed zip member {info.filename[:80]!r} ({method}): torch.save "
                    "writes them stored")
        if info.compress_size != info.file_size:
            return (f"zip member {info.filename[:80]!r} is stored, but records "
                    f"{info.compress_size} bytes stored and {info.file_size} unpacked")
        at = info.header_offset
        lengths = struct.unpack_from("<HH", data, at + 26) if at + 30 <= len(data) else None
        end = at + 30 + sum(lengths) + info.compress_size if lengths else len(data) + 1
        if end > archive.start_dir:
            return (f"zip member {info.filename[:80]!r} runs past the members' part of the "
                    f"archive (to byte {end}, its directory starts at {archive.start_dir})")
    return None


def _archive_problem(data: bytes, archive: zipfile.ZipFile) -> str | None:
    """Why the archive (``data``, open as ``archive``) is not laid out as torch.save writes it,
    so that torch.load could read other bytes than the checks, or None. Reads no member's data:
    runs before the CRC check and the pickle scan. Its size is bounded already
    (``check_archive``).
    """
    if data[:4] != b"PK\x03\x04":  # torch.save starts with its first member
        return ("not a torch.save archive: something else comes before the zip archive (a "
                "wrapped or self-extracting file?)")
    if shift := _directory_shift(data, archive):
        return (f"its zip directory lies {shift} bytes from where the archive's end record puts "
                "it (a second archive inside: torch's zip reader would read another directory "
                "than the one checked)")
    infos = archive.infolist()
    # a name cut at a NUL by zipfile (not by torch), or control characters torch.save never
    # writes
    if odd := next((i.orig_filename for i in infos if i.orig_filename != i.filename
                    or not i.filename.isprintable()), None):
        return f"archive member {odd[:80]!r} has a name torch.save does not write"
    names = [i.filename for i in infos]
    top = names[0].split("/")[0] if names else ""
    if odd := next((n for n in names if n.split("/")[0] != top or ".." in n.split("/")
                    or n.startswith("/")), None):
        return (f"archive member {odd[:80]!r} lies outside the archive's folder {top[:40]!r} "
                "(torch.save writes every member into one folder)")
    if problem := _name_problem(infos, top) or _member_problem(data, archive):
        return problem
    pickles = [n for n in names if n.lower().endswith(".pkl")]
    if pickles != [f"{top}/data.pkl"]:  # torch.load reads that one; others are only cost
        return (f"its archive holds {len(pickles)} pickled members "
                f"({', '.join(repr(n[:40]) for n in pickles[:3])}); torch.save writes one, "
                f"{top[:40]}/data.pkl")
    return None


def _pickled_problem(data: bytes, archive: zipfile.ZipFile) -> str | None:
    """Why the pickled structure torch.load would build from the archive (``data``, open as
    ``archive``, laid out as torch.save writes it: ``_archive_problem``) would be too costly
    (``pickle_scan``), or None. The scanned bytes are compared with the ``data.pkl`` that
    torch's own zip reader finds, so the scanned pickle is the one loaded.
    """
    name = f"{archive.namelist()[0].split('/')[0]}/data.pkl"
    pickled = archive.read(name)
    try:
        theirs = torch._C.PyTorchFileReader(io.BytesIO(data)).get_record("data.pkl")
    except RuntimeError:  # torch.load cannot open it either, and says why in its own words
        theirs = pickled
    if theirs != pickled:
        return (f"torch's zip reader finds another data.pkl ({len(theirs)} bytes) than "
                f"{name[:80]!r} checked ({len(pickled)} bytes)")
    return pickle_problem(pickled)


def _tensors(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor reachable from a loaded checkpoint, with where it sits (e.g.
    ``state_dict.net.stem.conv.weight``). Iterative, and each container is visited once: a
    pickle can nest lists 10^5 deep or hold one list twice at each of 100 levels (2^100 paths
    from a few bytes)."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    kinds = (torch.Tensor, Mapping, list, tuple, set)
    while stack:
        where, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield where, item
        elif id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
            # only what may hold a tensor is kept (a flat list of 50 million None cost 8 GB
            # as (where, value) pairs), and a key is named by its text only when it is a name
            # or a number (the text of a deeply shared tuple never ends: fifth fuzz round)
            stack.extend((f"{where}.{_key(k)}".lstrip(".")[:200], v) for k, v in pairs
                         if isinstance(v, kinds))


def _key(key: Any) -> str:
    """A container key as it appears in a message: its text for a name or number, else its type."""
    return str(key)[:80] if isinstance(key, str | int | float) else f"<{type(key).__name__}>"


def _tensor_problem(t: torch.Tensor) -> str | None:
    """Why ``t`` is not a plain dense array of values a network could hold (None: it is)."""
    if t.is_nested:
        return "a nested tensor"
    if t.layout != torch.strided:
        return f"a {str(t.layout).replace('torch.', '')} tensor, not a dense one"
    if t.is_quantized:
        return (f"quantized ({str(t.dtype).replace('torch.', '')}): not supported, save the "
                "float weights")
    if t.is_meta:
        return "a meta tensor (a shape without values)"
    if t.is_floating_point() and t.dtype not in _FLOAT_DTYPES:
        return f"{str(t.dtype).replace('torch.', '')}: not supported, save float16/32/64 weights"
    room = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    if t.numel() * t.element_size() > room:
        return (f"a view of {tuple(t.shape)} values over {room} bytes of storage (overlapping "
                "or broadcast strides), not saved weights")
    if _self_overlapping(t):  # fits its storage, yet an in-place write (an optimiser's step) fails
        return (f"a view of {tuple(t.shape)} whose strides {tuple(t.stride())} are not a "
                "dense array's (they reach one value more than once), not saved values")
    return None


def _self_overlapping(t: torch.Tensor) -> bool:
    """Whether two indices of ``t`` reach the same stored element: with its dimensions (of size
    > 1) sorted by stride, each stride must exceed the span of those before it (how a dense
    array or a permutation of one is laid out; an interleaved layout that happens not to
    overlap is refused too: saved tensors never have one). A tensor without values has none."""
    if t.numel() == 0:
        return False
    span = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride(), strict=True)
                               if n > 1):
        if stride < span:
            return True
        span += stride * (size - 1)
    return False


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """The first and one-past-last byte of its storage that ``t`` (non-empty) reaches."""
    start = t.storage_offset() * t.element_size()
    last = sum(st * (n - 1) for n, st in zip(t.shape, t.stride(), strict=True))
    return start, start + (last + 1) * t.element_size()


def _shared_state(spans: list[tuple[int, int, int, str]]) -> tuple[str, str] | None:
    """Two tensors whose stored bytes overlap where one is an optimiser's state (each holds its
    own running averages; tied weights, or a callback's score kept under two names, may
    share), from (storage, first byte, end byte, where) of every tensor; else None."""
    spans = sorted(spans)
    reach: dict[int, tuple[int, str]] = {}  # storage -> (furthest end so far, whose)
    for storage, start, end, where in spans:
        far, whose = reach.get(storage, (0, ""))
        if start < far and "optimizer_states" in (where.split(".")[0], whose.split(".")[0]):
            return whose, where
        if end > far:
            reach[storage] = (end, where)
    return None


def _check_tensors(path: Path, ckpt: Any, unpacked: int) -> None:
    """Refuse tensors that are not dense arrays of stored values, and tensors holding more
    bytes in all than the archive unpacks to (twice, for tied weights).

    A view with zero strides holds as many values as it likes over one stored number: a
    50 000 x 50 000 view in a 200 kB file took 17 GB and 41 s to check for NaN and cast (fourth
    fuzz round), and 200 of them never finished. Saved weights never overlap themselves, and
    together hold about what the file unpacks to.
    """
    total = 0
    spans: list[tuple[int, int, int, str]] = []
    for where, t in _tensors(ckpt):
        problem = _tensor_problem(t)
        if problem:
            what = where.removeprefix("state_dict.")
            raise CheckpointError(f"{path}: {'weight' if what != where else 'tensor'} "
                                  f"{what[:80]!r} is {problem}")
        total += t.numel() * t.element_size()
        if t.numel():
            spans.append((t.untyped_storage().data_ptr(), *_byte_span(t), where))
        if total > 2 * unpacked:
            raise CheckpointError(f"{path}: its tensors hold at least {total / 1024**2:.0f} MB, "
                                  f"more than twice the {unpacked / 1024**2:.0f} MB its archive "
                                  "unpacks to (views sharing their storage), not saved weights")
    if shared := _shared_state(spans):  # red-team round 10: two RMSProp running averages
        raise CheckpointError(  # over one memory trained on (and were saved again) silently
            f"{path}: tensors {shared[0][:80]!r} and {shared[1][:80]!r} share stored values (an "
            "optimiser's state holds its own), not a checkpoint training wrote")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    require_lightning: bool = True) -> dict[str, Any]:
    """Load ``path`` with ``weights_only=True``; raise :class:`CheckpointError` on any problem.

    ``require_lightning``: the file must be a Lightning checkpoint (``state_dict`` and
    ``hyper_parameters``), not a bare ``state_dict``. Non-finite weights are refused too.
    """
    path = Path(path)
    try:  # (a folder on the way that may not be searched raises, not answers False)
        if not path.exists():
            raise MissingCheckpointError(f"{path}: no such checkpoint file (does not exist)")
        if path.is_dir():
            raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file (a pipe or device?)")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
        data = read_model_file(path)  # every check below and torch.load read this copy
    except CheckpointError:  # (MissingCheckpointError is an OSError too)
        raise
    except ValueError as err:  # the limits' own one-line message, naming the file
        raise CheckpointError(str(err)) from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({_first_line(err)})") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):  # its directory sits at the very end
        if data.startswith(_LEGACY_MAGIC):
            raise CheckpointError(f"{path}: a legacy torch file (torch.save before 1.6, or "
                                  "_use_new_zipfile_serialization=False): not supported; load it "
                                  "with torch.load(weights_only=True) and save it again")
        raise CheckpointError(f"{path}: not a readable checkpoint: " + (
            _other_model_file(data) or "truncated, or not a file written by torch.save (no "
            "complete zip archive)"))
    try:  # before anything is unpacked: a decompression bomb is refused
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = check_archive(path, archive=archive)
            problem = _archive_problem(data, archive)  # before any member's data is read
            damaged = None if problem else _damaged_member(archive)
            if not (problem or damaged):
                problem = _pickled_problem(data, archive)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, RuntimeError, NotImplementedError,
            zlib.error) as err:  # also encrypted, oddly compressed or corrupt deflated members
        raise CheckpointError(f"{path}: cannot read the zip archive "
                              f"({_first_line(err)})") from None
    except ValueError as err:  # the limits' own one-line message, naming the file
        raise CheckpointError(str(err)) from None
    if damaged:
        raise CheckpointError(f"{path}: damaged: {damaged[:80]!r} fails its CRC-32 check (a "
                              "corrupted or partial copy); copy the checkpoint again")
    if problem:  # before torch.load builds anything
        raise CheckpointError(f"{path}: refused: {problem}")
    safe = [(_AttributeDict, name) for name in _LIGHTNING_TYPES]
    try:
        # torch warns on deprecated contents (quantized or typed storages): the checks below
        # say what is wrong in one line, so its multi-line warnings would only add noise
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = _first_line(err)
        if operand := re.search(r"Unsupported operand (\d+)", str(err)):
            code = int(operand.group(1))
            name = next((op.name for op in pickletools.opcodes if ord(op.code) == code), "unknown")
            raise CheckpointError(
                f"{path}: refused: its pickled structure uses pickle opcode {code} ({name}), which "
                "the safe loader does not read (only tensors and plain values are accepted)"
            ) from None
        if "Weights only load failed" in msg or "Unsupported global" in str(err):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: the checkpoint holds Python objects that could run code"
                f"{what} (not loadable with weights_only=True); only tensors and plain values "
                "are accepted") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({msg})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: refused: loading it ran out of memory (it asks for more "
                              "than this machine has; a model's weights do not)") from None
    except Exception as err:  # noqa: BLE001 - whatever torch's loader raises on a crafted
        # pickle (OverflowError, LookupError, AssertionError, struct.error, RecursionError...)
        raise CheckpointError(
            f"{path}: not a readable checkpoint, truncated or not a torch file "
            f"({type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__})")
    if require_lightning and not ("state_dict" in ckpt and "hyper_parameters" in ckpt):
        what = "a plain state_dict" if ckpt and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else "a dict"
        raise CheckpointError(
            f"{path}: not a kneeplan checkpoint ({what} without 'state_dict' and "
            "'hyper_parameters')")
    if require_lightning and not isinstance(ckpt["hyper_parameters"], Mapping):
        raise CheckpointError(f"{path}: not a kneeplan checkpoint ('hyper_parameters' is not a "
                              "dict)")
    if require_lightning:
        try:  # before a network is built from them: bounded size, time and memory
            check_hyper_parameters(path, ckpt["hyper_parameters"])
        except ValueError as err:
            raise CheckpointError(f"{err} (refused: outside what a kneeplan model may ask for)"
                                  ) from None
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: its state_dict is a {type(state).__name__}, not a "
                              "mapping of weight names to tensors")
    if not all(isinstance(name, str) for name in state):
        name = next(n for n in state if not isinstance(n, str))
        raise CheckpointError(f"{path}: its state_dict has a key of type "
                              f"{type(name).__name__} ({short_repr(name)}), not a weight name")
    _check_tensors(path, ckpt, unpacked)
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} of {len(state)} weight tensors hold NaN or infinity "
            f"(e.g. {bad[0]}): the training that wrote it diverged")
    return dict(ckpt)


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an infinity."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor)
            and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def module_is_finite(module: torch.nn.Module) -> bool:
    """True when every floating parameter and buffer of ``module`` is finite."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def mistyped_weights(state: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of ``state``'s tensors that are integer, bool or complex where the network's
    (``own``, a module's ``state_dict``) are floating point: torch casts them silently when
    copying (int weights ran as a rounded network) or fails in a message of several lines."""
    return [k for k, v in own.items() if v.is_floating_point()
            and isinstance(state.get(k), torch.Tensor) and not state[k].is_floating_point()]


def check_architecture(path: str | Path, state: Mapping[str, Any],
                       module: torch.nn.Module) -> None:
    """Raise :class:`CheckpointError` when ``state`` does not fit ``module`` (names, shapes, and
    number kinds: see :func:`mistyped_weights`)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and isinstance(state[k], torch.Tensor)
              and tuple(state[k].shape) != tuple(own[k].shape)]
    types = mistyped_weights(state, own)
    if missing or extra or shapes or types:
        detail = (f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} of another "
                  f"shape, {len(types)} not floating point"
                  + (f", e.g. {(missing + extra + shapes + types)[0]}"))
        raise CheckpointError(
            f"{path}: written for another network architecture than the configured one "
            f"({detail})")
