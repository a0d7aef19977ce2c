"""Bounds on a checkpoint's pickled structure, read from its opcodes before anything is built.

``torch.load(weights_only=True)`` runs no code, but what it builds can still cost without
bound: a dictionary key made of tuples that share their parts (``t = (t, t)`` 64 times over,
~130 bytes) is hashed leaf by leaf, 2^64 visits, so the load never returns; a flat list of 50
million ``None`` (a 53 MB file) took 8 GB to walk; ``bytearray(2**31)`` allocates what the
file only names (fifth fuzz round and its review). The standard library's
``pickletools.genops`` reads the opcodes without building anything; a small stack machine here
follows what each value would expand to (a shared part once per path, as hashing or walking
visits it), what the load would hash in all and what it would allocate, and refuses before
``torch.load`` starts.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import Any

MAX_OPS = 1_000_000  # opcodes in all (the quick network's checkpoint has 39 000; the
# paper's, twice the hourglasses and one level deeper, about 10^5); ~2 s to read 10^6
MAX_VALUES = 5_000_000  # values one object expands to, shared parts counted per path
MAX_KEY_VALUES = 10_000  # values in one dictionary key or set item (each is hashed whole)
MAX_HASHED = 5_000_000  # values hashed in all while loading (keys, set items)
MAX_ALLOCATED = 256 * 1024**2  # bytes ``bytearray(n)`` calls may ask for in all

_CONTAINERS = {"TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"}  # built from a marked run
_ADD_TO_TOP = {"APPENDS", "SETITEMS", "ADDITEMS"}  # a marked run added to the object below
_PAIRS = {"DICT", "SETITEMS", "SETITEM"}  # key, value, key, value, ...: the keys are hashed
_SETS = {"FROZENSET", "ADDITEMS"}  # every item is hashed
# globals torch's weights-only loader calls (``torch/_weights_only_unpickler.py``) that hash the
# items of their argument: set(...), Counter(...), OrderedDict([(key, value), ...])
_HASHING = {f"{module} {name}" for module in ("builtins", "__builtin__")
            for name in ("set", "frozenset")} | {"collections Counter", "collections OrderedDict"}
_BYTEARRAY = {"builtins bytearray", "__builtin__ bytearray"}


class _Refused(Exception):
    """The reason a pickle is refused (its one-line text)."""


@dataclass(eq=False)
class _Node:
    """A value on the stack: what it expands to, its items (containers), and its text or
    number when that matters (a global's name, an integer argument)."""

    size: int = 1
    tag: Any = None
    items: list[_Node] = field(default_factory=list)


_MARK: Any = object()  # (not a node: growing it is an error, as for a malformed pickle)


class _Machine:
    """The opcode stack machine of ``pickle_problem`` (one per pickle)."""

    def __init__(self) -> None:
        self.stack: list[_Node] = []
        self.memo: dict[int, _Node] = {}
        self.hashed = 0
        self.allocated = 0

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

    def hash_all(self, keys: list[_Node]) -> None:
        """``keys`` are hashed: each bounded, and all of them together."""
        for key in keys:
            if key.size > MAX_KEY_VALUES:
                raise _Refused(f"a dictionary key or set item in its pickled structure is made of "
                               f"{key.size:,} values (hashing it would not end: a hash bomb)")
            self.hashed += key.size
        if self.hashed > MAX_HASHED:
            raise _Refused(f"loading it would hash more than {MAX_HASHED:,} values (keys and set "
                           "items, parts shared over and over: a hash bomb)")

    def reduce(self, func: _Node, args: _Node) -> _Node:
        """``func(*args)``: the calls torch's loader allows that hash or allocate are bounded."""
        if func.tag in _HASHING:
            for arg in args.items:  # set(items), Counter(items or mapping), OrderedDict(pairs)
                keys = arg.items[0::2] if arg.tag == "DICT" else arg.items
                self.hash_all([k.items[0] if func.tag.endswith("OrderedDict") and k.items else k
                               for k in keys])
        if func.tag in _BYTEARRAY:
            for arg in args.items:
                if isinstance(arg.tag, int) and not isinstance(arg.tag, bool):
                    self.allocated += max(arg.tag, 0)
            if self.allocated > MAX_ALLOCATED:
                raise _Refused(f"its pickled structure asks for more than "
                               f"{MAX_ALLOCATED // 1024**2} MB through bytearray(n) (an "
                               "allocation the file only names)")
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
        elif name == "GLOBAL":
            stack.append(_Node(tag=str(arg)))
        elif name == "STACK_GLOBAL":
            qual, module = stack.pop(), stack.pop()
            stack.append(_Node(tag=f"{module.tag} {qual.tag}"))
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
            for _ in op.stack_after:
                node = _Node(tag=arg if isinstance(arg, int | str) else None)
                self.grow(node, taken)
                stack.append(node)


def pickle_problem(data: bytes) -> str | None:
    """Why the pickle ``data`` would be too costly to load (None: it is not).

    Counts opcodes (``MAX_OPS``), the values each object expands to (``MAX_VALUES``), the values
    of each dictionary key or set item (``MAX_KEY_VALUES``) and of all of them together
    (``MAX_HASHED``), and the bytes ``bytearray(n)`` would allocate (``MAX_ALLOCATED``).
    Containers are followed as they grow (a list filled after a set was made of it counts), so
    what a set, Counter or OrderedDict call hashes is what it is handed then. A pickle that does
    not parse is left to ``torch.load``'s own message.
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
