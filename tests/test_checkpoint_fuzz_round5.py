"""Fifth fuzz round of checkpoints: a few hundred bytes of pickle that ``torch.load(weights_only
=True)`` would build for ever (a dictionary keyed by a tuple whose halves are shared, 2^64
leaves to hash) or at gigabytes (a flat list of millions of values walked as pairs), refused in
one line naming the file before anything is built; the scanner against hand-counted pickles."""

from __future__ import annotations

import copy
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch

from lightning_modules.checkpoint_file import read_checkpoint
from lightning_modules.pickle_scan import MAX_OPS, MAX_VALUES, pickle_problem
from tests.model_files import refused_checkpoint, trained_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    return trained_tiny_checkpoint(tmp_path_factory)


def _shared_tuple(depth: int) -> tuple:
    """(t, t) ``depth`` times over: 2^depth leaves, ~2 pickle opcodes per level (memoised)."""
    t: tuple = (None,)
    for _ in range(depth):
        t = (t, t)
    return t


def _keyed_by(path: Path, out: Path, key: tuple) -> Path:
    """``path``'s checkpoint with one more entry, a dict ``{key: 0}``: written as a list
    ``[key, 0]`` by torch.save, then its two opcodes turned into EMPTY_DICT / SETITEMS (pickle
    itself cannot write a dict whose key hashing would not end)."""
    ck = torch.load(path, weights_only=True)
    ck["zz_junk"] = [key, 0]
    torch.save(ck, out.with_suffix(".tmp"))
    with zipfile.ZipFile(out.with_suffix(".tmp")) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.endswith("data.pkl"))
    pkl = bytearray(members[name])
    marker = pkl.find(b"zz_junk")
    ops = list(pickletools.genops(bytes(pkl)))
    start = next(pos for op, _, pos in ops if pos > marker and op.name == "EMPTY_LIST")
    end = next(pos for op, _, pos in ops if pos > start and op.name == "APPENDS")
    pkl[start], pkl[end] = ord("}"), ord("u")  # EMPTY_DICT, SETITEMS
    members[name] = bytes(pkl)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return out


def test_a_tuple_key_shared_64_deep_is_refused_before_loading(ckpt_path, tmp_path):
    """Was: torch.load hashed 2^64 leaves, plan / evaluate / export / resume never returned
    (the file is the real checkpoint plus ~500 bytes, every size and CRC check passed)."""
    refused_checkpoint(_keyed_by(ckpt_path, tmp_path / "d64.ckpt", _shared_tuple(64)), "bomb")
    # 20 deep expands to ~3 million values (under the object limit): refused as a key that is
    # not a name or a number (a checkpoint's keys are names and small numbers)
    refused_checkpoint(_keyed_by(ckpt_path, tmp_path / "d20.ckpt", _shared_tuple(20)),
             "not a name or a number")


def test_a_flat_list_of_millions_is_refused_and_small_ones_load(ckpt_path, tmp_path):
    """Was: 50 million None (a 53 MB file) took 113 s and 8 GB to walk, then loaded."""
    ck = torch.load(ckpt_path, weights_only=True)
    big = copy.deepcopy(ck)
    big["loops"]["junk"] = [None] * (MAX_OPS + 10)
    torch.save(big, tmp_path / "long.ckpt")
    refused_checkpoint(tmp_path / "long.ckpt", "opcodes")
    fine = copy.deepcopy(ck)
    fine["loops"]["junk"] = [None] * 10_000
    torch.save(fine, tmp_path / "fine.ckpt")
    assert read_checkpoint(tmp_path / "fine.ckpt")["loops"]["junk"] == [None] * 10_000


def test_the_real_checkpoint_passes_the_scan(ckpt_path):
    with zipfile.ZipFile(ckpt_path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert pickle_problem(pkl) is None
    assert sum(1 for _ in pickletools.genops(pkl)) < MAX_OPS / 20


@pytest.mark.parametrize("obj, problem", [
    # (t, t) nested k deep over (None,): 3 * 2^k - 1 values from ~2k opcodes (memo GETs)
    (_shared_tuple(20), None),  # 3 145 727 values: under MAX_VALUES
    (_shared_tuple(21), "expands to more than"),  # 6 291 455
    ({_shared_tuple(2): 1}, "not a name or a number"),  # any tuple key
    ({1.5: 1}, "not a name or a number"),
    ({2**61 - 1: 1}, "an integer beyond 2^61"),  # hashes like 0: many such keys, n^2 inserts
    ({2**61 - 2: 1, -5: 2, "a": 3, None: 4, True: 5}, None),
    ({1, 2}, "calls __builtin__.set"),  # a global no checkpoint of this project holds
    ({i: [i] for i in range(20_000)}, None),  # an optimiser state's shape: fine
    ([list(range(50))] * 3, None),
    ({"a": [1, 2, 3], 4: (5, 6)}, None),
])
def test_scan_counts_by_hand(obj, problem):
    """Hand-counted, on pickles as torch.save writes them (protocol 2)."""
    assert 3 * 2**20 - 1 < MAX_VALUES < 3 * 2**21 - 1
    found = pickle_problem(pickle.dumps(obj, protocol=2))
    assert (found is None) if problem is None else (problem in (found or "")), found


def test_scan_leaves_unparsable_pickles_to_torch():
    assert pickle_problem(b"not a pickle") is None
    assert pickle_problem(b"\x80\x02h\x05.") is None  # a memo reference to nothing


def test_messages_name_the_real_problem(ckpt_path, tmp_path):
    """Were: "holds Python objects that could run code" for a zip with bytes before it and for
    a huge integer (it holds neither), and torch's "[enforce fail at inline_container.cc]" for
    a member outside the archive's folder."""
    wrapped = tmp_path / "wrapped.ckpt"
    wrapped.write_bytes(b"#!/bin/sh\n" * 400 + ckpt_path.read_bytes())
    line = refused_checkpoint(wrapped, "something else comes before the zip")
    assert "could run code" not in line
    ck = torch.load(ckpt_path, weights_only=True)
    ck["hyper_parameters"]["lr"] = 2**100_000  # pickled as LONG4
    torch.save(ck, tmp_path / "bigint.ckpt")
    refused_checkpoint(tmp_path / "bigint.ckpt", "pickle opcode 139 (LONG4)")
    outside = tmp_path / "outside.ckpt"
    outside.write_bytes(ckpt_path.read_bytes())
    with zipfile.ZipFile(outside, "a") as z:
        z.writestr("../../evil", b"x")
    refused_checkpoint(outside, "'../../evil' lies outside the archive's folder")


def _appended(path: Path, out: Path, ops: bytes) -> Path:
    """``path``'s checkpoint with ``ops`` run before the root is returned: the pickle's STOP is
    dropped, ``ops`` appended, then ``BINGET 0`` (the root dict, memo 0) and STOP (what the
    review of round 5 did: the objects left on the stack are built and never used)."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.endswith("data.pkl"))
    assert members[name].endswith(b".")
    members[name] = members[name][:-1] + ops + b"h\x00."
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return out


def _shared_tuple_ops(depth: int) -> bytes:
    """Opcodes of (t, t) nested ``depth`` deep, memoised at 9000 (one PUT / GET pair per level,
    each level's tuple left on the stack: torch's loader has no POP). Only opcodes torch's
    weights-only loader reads are used, so these pickles reach it."""
    ops = b"N\x85r\x28\x23\x00\x00"  # NONE, TUPLE1, LONG_BINPUT 9000
    for _ in range(depth):  # LONG_BINGET 9000 twice, TUPLE2, LONG_BINPUT 9000
        ops += b"j\x28\x23\x00\x00j\x28\x23\x00\x00\x86r\x28\x23\x00\x00"
    return ops


CALLS = {
    # OrderedDict([(key, 0)]) hashes its keys (torch's loader allows it): a key of 3 M values
    "ordered_dict": (_shared_tuple_ops(20) + b"ccollections\nOrderedDict\nj\x28\x23\x00\x00"
                     b"K\x00\x86\x85\x85R", "not a name or a number"),
    # the same 6 000-value key 1 000 times: each under the per-key size bound, all are not
    "many_keys": (_shared_tuple_ops(11) + b"}(" + b"j\x28\x23\x00\x00K\x00" * 1000 + b"u",
                  "not a name or a number"),
    # int keys k * (2^61 - 1) all hash to 0: inserting n of them takes n^2 steps
    "colliding_ints": (b"}(" + b"".join(b"\x8a\x09" + (k * (2**61 - 1)).to_bytes(9, "little")
                                        + b"K\x00" for k in range(1, 4)) + b"u",
                       "an integer beyond 2^61"),
    # bytearray(2**31) allocates what the file only names (LONG1 2^31)
    "bytearray": (b"c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\x80\x00\x85R",
                  "calls __builtin__.bytearray"),
    # set(L): the argument (L,) made while L was empty, L filled before the call
    "set_of_a_filled_list": (b"]r\x29\x23\x00\x00j\x29\x23\x00\x00\x85r\x2a\x23\x00\x00"
                             + _shared_tuple_ops(20) + b"j\x29\x23\x00\x00j\x28\x23\x00\x00a"
                             b"c__builtin__\nset\nj\x2a\x23\x00\x00R", "calls __builtin__.set"),
    # Counter under torch's Python 2 alias (the loader maps UserDict to collections)
    "aliased_counter": (b"cUserDict\nCounter\nX\x03\x00\x00\x00abc\x85R",
                        "calls UserDict.Counter"),
    # _codecs.encode(s, "punycode"): its encoder is quadratic in the length of s
    "punycode": (b"c_codecs\nencode\nX\x03\x00\x00\x00abcX\x08\x00\x00\x00punycode\x86R",
                 "calls _codecs.encode"),
}


def _pickle(ops: bytes) -> bytes:
    """A protocol-2 pickle: a dict (memo 0), ``ops``, then the dict returned."""
    return b"\x80\x02}q\x00" + ops + b"h\x00."


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_calls_the_safe_loader_allows_are_bounded(ckpt_path, tmp_path, kind):
    """Review of fuzz round 5: OrderedDict(...) hashing, many keys each under the bound, a set
    of a list filled after the call's argument was built, and bytearray(n) got past the scan
    (a <5 MB file did not load in 60 s; two bytearray calls took 4.3 GB)."""
    ops, words = CALLS[kind]
    refused_checkpoint(_appended(ckpt_path, tmp_path / "c.ckpt", ops), words)


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_the_bomb_pickles_are_ones_torch_loads(kind):
    """The same constructions, small, are read by torch's weights-only loader (the scan guards
    what that loader would really build), and the scan refuses them for what they are, not
    for their size."""
    import io

    from torch import _weights_only_unpickler

    ops, words = CALLS[kind]
    small = (ops.replace(_shared_tuple_ops(20), _shared_tuple_ops(2))
             .replace(_shared_tuple_ops(11), _shared_tuple_ops(2))
             .replace(b"\x8a\x05\x00\x00\x00\x80\x00", b"K\x10"))
    assert _weights_only_unpickler.load(io.BytesIO(_pickle(small)), encoding="utf-8") == {}
    assert words in (pickle_problem(_pickle(small)) or "")


def test_extra_pickles_and_loader_errors_are_one_line(ckpt_path, tmp_path):
    """Second review of round 5: 63 extra .pkl members (never read by torch.load) were each
    scanned, ~150 s; a storage id that is an int, a cut integer and others escaped torch.load
    as AssertionError, struct.error, ... tracebacks."""
    extra = tmp_path / "extra.ckpt"
    extra.write_bytes(ckpt_path.read_bytes())
    with zipfile.ZipFile(extra, "a") as z:
        top = z.namelist()[0].split("/")[0]
        z.writestr(f"{top}/junk.pkl", b"\x80\x02}.")
    refused_checkpoint(extra, "pickled members")
    refused_checkpoint(_appended(ckpt_path, tmp_path / "pid.ckpt", b"K\x05Q"),
             "not a readable checkpoint, truncated or not a torch file (AssertionError")
