"""Bounds on a checkpoint's pickled structure, read from its opcodes before anything is built.

``torch.load(weights_only=True)`` runs no code, but what it builds can still cost without
bound: a dictionary key made of tuples that share their parts (``t = (t, t)`` 64 times over,
~130 bytes) is hashed leaf by leaf, 2^64 visits, so the load never returns; a flat list of 50
million ``None`` (a 53 MB file) took 8 GB to walk; ``bytearray(2**31)`` allocates what the
file only names (fifth fuzz round and its review). The standard library's
``pickletools.genops`` reads the opcodes without building anything; a small stack machine here
follows what each value would expand to (a shared part once per path, as walking visits it),
what it would hash and which functions it would call, and refuses before ``torch.load``
starts: only the globals a checkpoint of this project names, and keys that are names or small
numbers.
"""

from __future__ import annotations

import pickletools
import re
from dataclasses import dataclass, field
from typing import Any

MAX_OPS = 1_000_000  # opcodes in all (the quick network's checkpoint has 39 000; the
# paper's, twice the hourglasses and one level deeper, about 10^5); ~2 s to read 10^6
MAX_VALUES = 5_000_000  # values one object expands to, shared parts counted per path

_CONTAINERS = {"TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"}  # built from a marked run
_ADD_TO_TOP = {"APPENDS", "SETITEMS", "ADDITEMS"}  # a marked run added to the object below
_PAIRS = {"DICT", "SETITEMS", "SETITEM"}  # key, value, key, value, ...: the keys are hashed
_SETS = {"FROZENSET", "ADDITEMS"}  # every item is hashed
# The globals a checkpoint may name. torch's weights-only loader accepts more (set, Counter,
# bytearray, complex, _codecs.encode, device-tensor rebuilds, Python 2 aliases such as
# "UserDict Counter"), and each was a way to make it hash or allocate without bound (second
# review of fuzz round 5: punycode encoding of a 60 000-character string, Counter of a 1 MB
# string 2 000 times, a zero-stride view copied in full). A Lightning checkpoint of this
# project names OrderedDict, _rebuild_tensor_v2 and storage classes only.
_ALLOWED = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
            "torch._utils _rebuild_parameter", "torch Size", "torch device",
            # built (no allocation beyond the archive's own storages) so that read_checkpoint
            # can say what they are: float8 (v3), meta, nested, sparse and quantized tensors
            "torch._utils _rebuild_tensor_v3", "torch._utils _rebuild_meta_tensor_no_storage",
            "torch._utils _rebuild_nested_tensor", "torch._utils _rebuild_sparse_tensor",
            "torch._utils _rebuild_qtensor",
            "torch.serialization _get_layout",
            "lightning_fabric.utilities.data AttributeDict",
            "pytorch_lightning.utilities.parsing AttributeDict"}
_ALLOWED_PATTERN = re.compile(  # storage classes and dtypes (objects, nothing is called)
    r"torch(\.storage)? [A-Za-z0-9]+Storage"
    r"|torch (float|bfloat|int|uint|bool|complex|half|double|long|short|c?q?u?int)[0-9a-z_]*")
_HASHING = {"collections OrderedDict"}  # OrderedDict([(key, value), ...]) hashes its keys
MAX_INT_KEY = 2**61 - 2  # ints beyond hash to one another (k and k + 2^61 - 1): n^2 inserts


class _Refused(Exception):
    """The reason a pickle is refused (its one-line text)."""


@dataclass(eq=False)
class _Node:
    """A value on the stack: what it expands to, its items (containers), and its text or
    number when that matters (a global's name, an integer argument)."""

    size: int = 1
    tag: Any = None
    items: list[_Node] = field(default_factory=list)
    kind: str = "object"  # "text", "int", "const" (None, True, False), "global" or "object"


_MARK: Any = object()  # (not a node: growing it is an error, as for a malformed pickle)


class _Machine:
    """The opcode stack machine of ``pickle_problem`` (one per pickle)."""

    def __init__(self) -> None:
        self.stack: list[_Node] = []
        self.memo: dict[int, _Node] = {}

    def pop_mark(self) -> list[_Node]:
        items: list[_Node] = []
        while True:
            item = self.stack.pop()  # (IndexError: no mark, not a pickle we follow)
            if item is _MARK:
                items.reverse()
                return items
            items.append(item)

    def grow(self, target: _Node, items: list[_Node]) -> None:
        """``items`` added to ``target`` (a container built, or appended to)."""
        target.items.extend(items)
        target.size += sum(i.size for i in items)
        if target.size > MAX_VALUES:
            raise _Refused(f"an object in its pickled structure expands to more than "
                           f"{MAX_VALUES:,} values (parts shared over and over: a decompression "
                           "bomb)")

    @staticmethod
    def hash_all(keys: list[_Node]) -> None:
        """``keys`` are hashed: only names, None / True / False and integers whose hashes
        differ (a tuple shared over and over hashed 2^64 leaves; ints k (2^61 - 1) all hash to
        0, so n of them took n^2 steps). A checkpoint's keys are names and small numbers."""
        for key in keys:
            if not (key.kind in ("text", "const")
                    or (key.kind == "int" and abs(key.tag) <= MAX_INT_KEY)):
                what = {"int": "an integer beyond 2^61 (such keys share hashes)"}.get(
                    key.kind, "not a name or a number")
                raise _Refused(f"a dictionary key or set item in its pickled structure is {what}"
                               " (a checkpoint's keys are names and small numbers)")

    def reduce(self, func: _Node, args: _Node) -> _Node:
        """``func(*args)``: what the one call that hashes (OrderedDict of pairs) hashes is
        bounded."""
        if func.tag in _HASHING:  # OrderedDict([(key, value), ...]); OrderedDict(mapping):
            for arg in args.items:  # the mapping's keys were checked as it was built
                if arg.tag != "DICT":
                    self.hash_all([pair.items[0] if pair.items else pair for pair in arg.items])
        node = _Node()
        self.grow(node, [args])
        return node

    def step(self, name: str, arg: Any, op: pickletools.OpcodeInfo) -> None:  # noqa: C901
        stack = self.stack
        if name == "MARK":
            stack.append(_MARK)
        elif name in ("PROTO", "FRAME", "READONLY_BUFFER"):
            return
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(self.memo[int(arg)])  # (KeyError: a reference to nothing)
        elif name in _CONTAINERS or name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            if name in _CONTAINERS:
                items = self.pop_mark()
            else:
                k = int(name[-1])
                items, stack[-k:] = stack[-k:], []
            self.hash_all(items[0::2] if name in _PAIRS else items if name in _SETS else [])
            node = _Node(tag="DICT" if name == "DICT" else None)
            self.grow(node, items)
            stack.append(node)
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE"):
            stack.append(_Node(tag="DICT" if name == "EMPTY_DICT" else None))
        elif name in _ADD_TO_TOP or name in ("APPEND", "SETITEM"):
            if name in _ADD_TO_TOP:
                items = self.pop_mark()
            else:
                items = [stack.pop() for _ in range(2 if name == "SETITEM" else 1)][::-1]
            self.hash_all(items[0::2] if name in _PAIRS else items if name in _SETS else [])
            self.grow(stack[-1], items)
        elif name == "BUILD":
            state = stack.pop()
            self.grow(stack[-1], [state])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "STACK_GLOBAL":
                qual, module = stack.pop(), stack.pop()
                arg = f"{module.tag} {qual.tag}"
            if str(arg) not in _ALLOWED and not _ALLOWED_PATTERN.fullmatch(str(arg)):
                raise _Refused(f"its pickled structure calls {str(arg).replace(' ', '.')[:80]}, "
                               "which a checkpoint of this project never holds (only tensors, "
                               "their storages and plain values)")
            stack.append(_Node(tag=str(arg), kind="global"))
        elif name == "REDUCE":
            args = stack.pop()
            stack.append(self.reduce(stack.pop(), args))
        else:  # constants, NEWOBJ, persistent ids: by the opcode's arity
            before = op.stack_before
            if pickletools.markobject in before:
                taken = self.pop_mark()
            elif before:
                taken, stack[len(stack) - len(before):] = stack[len(stack) - len(before):], []
            else:
                taken = []
            kind = ("text" if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name)
                    else "int" if isinstance(arg, int) and not isinstance(arg, bool)
                    else "const" if name in ("NONE", "NEWTRUE", "NEWFALSE") else "object")
            for _ in op.stack_after:
                node = _Node(tag=arg if isinstance(arg, int | str) else None, kind=kind)
                self.grow(node, taken)
                stack.append(node)


def pickle_problem(data: bytes) -> str | None:
    """Why the pickle ``data`` would be too costly to load (None: it is not).

    Counts opcodes (``MAX_OPS``) and the values each object expands to (``MAX_VALUES``,
    containers followed as they grow); refuses globals outside ``_ALLOWED`` and keys (or set
    items, or OrderedDict pairs) that are not names or small numbers. A pickle that does not
    parse is left to ``torch.load``'s own message.
    """
    machine = _Machine()
    try:
        for n, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if n >= MAX_OPS:
                return (f"its pickled structure has more than {MAX_OPS:,} opcodes (a checkpoint "
                        "of the paper's network has about 10^5)")
            if op.name == "STOP":
                break
            machine.step(op.name, arg, op)
    except _Refused as why:
        return str(why)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):  # not a pickle we
        return None  # can follow (a reference to nothing, no mark): torch.load says what is wrong
    return None
