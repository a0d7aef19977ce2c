"""Sixth fuzz round of checkpoints: zip archives that Python's ``zipfile`` (which the checks
read) and torch's zip reader (which ``torch.load`` reads) see differently, so the pickle that
was scanned is not the one loaded, and members torch.save never writes compressed.

torch's reader (miniz, ``PyTorchFileReader``) looks a record up as ``<first member's folder>/
<name>`` compared byte for byte with ASCII case ignored, and reads the central directory where
the archive's end record says it is; Python's zipfile matches exact names (a name cut at its
first NUL) and moves the directory by whatever comes before it. Every evil pickle here is
small enough to be harmless if it were loaded (a shared tuple 8 deep: 256 leaves to hash)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from lightning_modules.checkpoint_file import read_checkpoint
from tests.model_files import REPO, phantom_images, refused_checkpoint, untrained_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """An untrained tiny checkpoint in Lightning's format (``tests/test_planning.py``'s
    ``tiny_ckpt``): its archive's folder is ``tiny/``."""
    return untrained_tiny_checkpoint(tmp_path_factory.mktemp("ckpt6") / "tiny.ckpt")


def _hash_pickle(depth: int = 8) -> bytes:
    """``{(t, t): 0}`` with ``t`` shared ``depth`` levels deep (the round-5 hash bomb at 64)."""
    return b"\x80\x02}q\x00N\x85" + b"q\x01h\x01\x86" * depth + b"K\x00s."


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of ``members`` in order, names written as given (a NUL and duplicates too)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as z:
        warnings.simplefilter("ignore")  # "Duplicate name"
        for name, data in members:
            info = zipfile.ZipInfo("x")
            info.filename, info.compress_type = name, method  # (ZipInfo cuts at a NUL)
            z.writestr(info, data)
    return buf.getvalue()


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("name", ["data.PKL", "DATA.PKL", "Data.pkl"])
@pytest.mark.parametrize("first", [True, False], ids=["before", "after"])
def test_a_pickle_member_differing_in_case_is_refused(tiny, tmp_path, name, first):
    """Was: ``tiny/data.PKL`` beside ``tiny/data.pkl`` was loaded by torch (in either order)
    and never scanned nor counted in the pickle limit: 64 deep, plan hashed 2^64 leaves."""
    evil = [(f"tiny/{name}", _hash_pickle())]
    members = evil + _members(tiny) if first else _members(tiny) + evil
    raw = _zip(members)
    # the premise: torch's reader takes the other member for data.pkl, here in either order
    assert torch._C.PyTorchFileReader(io.BytesIO(raw)).get_record("data.pkl") == evil[0][1]
    line = refused_checkpoint(_write(tmp_path / "case.ckpt", raw), "same name when case is ignored")
    assert f"'tiny/{name}'" in line


@pytest.mark.parametrize("record", ["data.pkl", "version", "byteorder", "data/0",
                                    ".format_version", ".data/serialization_id"])
def test_a_record_renamed_in_another_case_is_refused(tiny, tmp_path, record):
    """torch reads ``tiny/VERSION`` as its ``version`` record, ``tiny/DATA.PKL`` as its pickle
    (was: loaded, or "0 pickled members")."""
    other = record.upper()
    members = [(f"tiny/{other}" if n == f"tiny/{record}" else n, d) for n, d in _members(tiny)]
    path = _write(tmp_path / "renamed.ckpt", _zip(members))
    line = refused_checkpoint(path, "differs only in case from torch's record")
    assert f"'tiny/{other}'" in line


@pytest.mark.parametrize("extra", ["tiny/VERSION", "tiny/data/0", "tiny/DATA/0",
                                   "tiny/Byteorder"])
def test_duplicate_names_with_or_without_case_are_refused(tiny, tmp_path, extra):
    """Two members torch cannot tell apart: which one it reads is up to its search (was:
    loaded; the exact duplicate only with Python's "Duplicate name" warning)."""
    members = _members(tiny)
    own = dict(members)[extra.lower()]
    path = _write(tmp_path / "dup.ckpt", _zip([*members, (extra, bytes(len(own)))]))
    refused_checkpoint(path, "same name when case is ignored")


def test_a_nul_or_control_character_in_a_name_is_refused(tiny, tmp_path):
    """Python's zipfile cuts a name at its first NUL (``tiny/data.pkl\\0x`` reads as
    ``tiny/data.pkl``), torch's reader does not: they would pick different members."""
    members = _members(tiny)
    path = _write(tmp_path / "nul.ckpt", _zip([*members, ("tiny/zz\0evil", b"x")]))
    refused_checkpoint(path, "'tiny/zz\\x00evil' has a name torch.save does not write")
    path = _write(tmp_path / "tab.ckpt", _zip([*members, ("tiny/zz\tx", b"x")]))
    refused_checkpoint(path, "has a name torch.save does not write")


def _two_directories(tiny: Path) -> bytes:
    """The checkpoint's archive behind an evil archive's members and central directory: the
    end record's directory offset points into the evil one (read by torch), while Python's
    zipfile takes the bytes before the real archive as a prefix and reads the real one."""
    good = _members(tiny)
    evil = [(n, _hash_pickle() if n.endswith("data.pkl") else d) for n, d in good]
    graw, eraw = _zip(good), _zip(evil)
    gsize, goff = struct.unpack_from("<II", graw, graw.rfind(b"PK\x05\x06") + 12)
    esize, eoff = struct.unpack_from("<II", eraw, eraw.rfind(b"PK\x05\x06") + 12)
    assert esize == gsize and eoff <= goff  # same names in the same order
    return eraw[:eoff] + bytes(goff - eoff) + eraw[eoff:eoff + esize] + graw


def test_a_second_central_directory_is_refused(tiny, tmp_path):
    """Was: the checks read the real checkpoint's pickle and CRCs, torch.load the evil one."""
    raw = _two_directories(tiny)
    with zipfile.ZipFile(io.BytesIO(raw)) as z:  # the premise: two readers, two pickles
        assert z.read("tiny/data.pkl") == dict(_members(tiny))["tiny/data.pkl"]
    assert torch._C.PyTorchFileReader(io.BytesIO(raw)).get_record("data.pkl") == _hash_pickle()
    refused_checkpoint(_write(tmp_path / "twodir.ckpt", raw), "zip directory lies")


def test_compressed_members_are_refused_before_any_is_read(tiny, tmp_path):
    """torch.save writes every member stored; deflated ones made a 2 MB file plan for 40 s at
    5.4 GB. A deflated member whose stream is broken gets the same line: no member was read."""
    members = _members(tiny)
    packed = _write(tmp_path / "packed.ckpt", _zip(members, zipfile.ZIP_DEFLATED))
    refused_checkpoint(packed, "compressed zip member 'tiny/data.pkl' (deflated): torch.save "
                               "writes them stored")
    one = _write(tmp_path / "one.ckpt", _mixed(members))
    refused_checkpoint(one, "compressed zip member 'tiny/data/0' (deflated)")
    broken = bytearray(packed.read_bytes())
    with zipfile.ZipFile(packed) as z:
        at = z.getinfo("tiny/data.pkl").header_offset
    n, m = struct.unpack_from("<HH", broken, at + 26)
    broken[at + 30 + n + m: at + 38 + n + m] = b"\xff" * 8  # deflate block type 3: invalid
    refused_checkpoint(_write(tmp_path / "broken.ckpt", bytes(broken)), "compressed zip member")


def _mixed(members: list[tuple[str, bytes]]) -> bytes:
    """Every member stored but the first weight record, deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data, zipfile.ZIP_DEFLATED if name == "tiny/data/0"
                       else zipfile.ZIP_STORED)
    return buf.getvalue()


def _set_sizes(raw: bytes, name: str, stored: int | None = None,
               unpacked: int | None = None) -> bytes:
    """``raw`` with the central-directory sizes of member ``name`` changed."""
    out, at = bytearray(raw), raw.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack_from("<H", out, at + 28)[0]
        if out[at + 46:at + 46 + n] == name.encode():
            if stored is not None:
                struct.pack_into("<I", out, at + 20, stored)
            if unpacked is not None:
                struct.pack_into("<I", out, at + 24, unpacked)
            return bytes(out)
        at = raw.find(b"PK\x01\x02", at + 4)
    raise KeyError(name)


def test_stored_sizes_that_disagree_or_run_past_the_archive_are_refused(tiny, tmp_path):
    """A stored member's two sizes are equal and its data ends before the directory (was:
    torch's "invalid header" message, and an EOFError traceback from the CRC check)."""
    raw = tiny.read_bytes()
    odd = _write(tmp_path / "odd.ckpt", _set_sizes(raw, "tiny/data/0", unpacked=10**6))
    refused_checkpoint(odd, "'tiny/data/0' is stored, but records")
    past = _write(tmp_path / "past.ckpt", _set_sizes(raw, "tiny/data/0", 10**6, 10**6))
    refused_checkpoint(past, "'tiny/data/0' runs past the members' part of the archive")


def test_checkpoints_as_torch_and_lightning_write_them_still_load(tiny, tmp_path):
    """Stored members, one folder, one directory: torch.save to a path, to a buffer
    (``archive/``), a folder name that is not ASCII (older torch wrote the file's), and our
    training's checkpoint writer (Lightning's ``torch.save``)."""
    from lightning_modules.checkpoints import SameFolderCheckpointIO

    assert set(read_checkpoint(tiny)) >= {"state_dict", "hyper_parameters"}
    ckpt = torch.load(tiny, weights_only=True)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    assert zipfile.ZipFile(buf).namelist()[0] == "archive/data.pkl"
    assert read_checkpoint(_write(tmp_path / "buffer.ckpt", buf.getvalue()))
    renamed = [("t\u00efny/" + n.split("/", 1)[1], d) for n, d in _members(tiny)]
    assert read_checkpoint(_write(tmp_path / "accent.ckpt", _zip(renamed)))  # a folder not ASCII
    SameFolderCheckpointIO().save_checkpoint(ckpt, tmp_path / "run" / "last.ckpt")
    assert read_checkpoint(tmp_path / "run" / "last.ckpt")["state_dict"].keys() == \
        ckpt["state_dict"].keys()


@pytest.mark.parametrize("kind", ["case", "deflated"])
def test_plan_refuses_them_in_one_line_with_status_2(tiny, tmp_path_factory, tmp_path, kind):
    """Through ``python -m planning.plan``: status 2, one ``plan: error:`` line naming the
    file, no plan written."""
    members = _members(tiny)
    if kind == "case":
        path, words = tmp_path / "zipcase.ckpt", "same name when case is ignored"
        path.write_bytes(_zip([("tiny/data.PKL", _hash_pickle()), *members]))
    else:
        path, words = tmp_path / "deflated.ckpt", "compressed zip member"
        path.write_bytes(_zip(members, zipfile.ZIP_DEFLATED))
    image = phantom_images(tmp_path_factory, n=1)[0]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "planning.plan", "--image", str(image),
                           "--ckpt", str(path), "--out", str(tmp_path / "o")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("plan: error:") and str(path) in err[0] and words in err[0], err
    assert not list((tmp_path / "o").glob("*_plan.*"))
