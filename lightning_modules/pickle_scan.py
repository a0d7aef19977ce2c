"""Bounds on a checkpoint's pickled structure, read from its opcodes before anything is built.

``torch.load(weights_only=True)`` runs no code, but what it builds can still cost without
bound: a dictionary key made of tuples that share their parts (``t = (t, t)`` 64 times over,
~130 bytes) is hashed leaf by leaf, 2^64 visits, so the load never returns; a flat list of 50
million ``None`` (a 53 MB file) took 8 GB to walk (fifth fuzz round). The standard library's
``pickletools.genops`` reads the opcodes without building anything; a small stack machine here
counts what each value would expand to (a shared part once per path, as hashing or walking
visits it) and refuses before ``torch.load`` starts.
"""

from __future__ import annotations

import pickletools

MAX_OPS = 1_000_000  # opcodes in all (the quick network's checkpoint has 39 000; the
# paper's, twice the hourglasses and one level deeper, about 10^5); ~1.5 s to read 10^6
MAX_VALUES = 5_000_000  # values one object expands to, shared parts counted per path
MAX_KEY_VALUES = 10_000  # values in one dictionary key or set item (each is hashed whole)

_MARK = object()
_CONTAINERS = {"TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"}  # built from a marked run
_APPEND_TO_TOP = {"APPENDS", "SETITEMS", "ADDITEMS"}  # a marked run added to the object below
# globals torch's weights-only loader calls whose arguments' items are hashed (a set of them)
_HASHING = {f"{module} {name}" for module in ("builtins", "__builtin__")
            for name in ("set", "frozenset")} | {"collections Counter"}


def pickle_problem(data: bytes) -> str | None:
    """Why the pickle ``data`` would be too costly to load (None: it is not).

    Counts opcodes (``MAX_OPS``), the values each object expands to (``MAX_VALUES``) and the
    values in each dictionary key or set item (``MAX_KEY_VALUES``). Sizes are fixed when an
    object is used, which is exact for tuples and frozensets (the only hashable containers).
    A pickle that does not parse is left to ``torch.load``'s own message.
    """
    stack: list = []
    memo: dict[int, list[int]] = {}

    def pop_mark() -> list:
        items: list = []
        while stack:
            item = stack.pop()
            if item is _MARK:
                items.reverse()
                return items
            items.append(item)
        raise ValueError("no mark")

    def node(size: int) -> list[int]:
        if size > MAX_VALUES:
            raise OverflowError(size)
        return [size]

    def keys_ok(keys: list) -> None:
        for key in keys:
            if key[0] > MAX_KEY_VALUES:
                raise KeyError(key[0])

    def hashed(name: str, items: list) -> list:
        """``items`` of a marked run, after checking the ones that opcode hashes."""
        if name in ("DICT", "SETITEMS"):  # key, value, key, value, ...
            keys_ok(items[0::2])
        elif name in ("FROZENSET", "ADDITEMS"):
            keys_ok(items)
        return items

    try:
        for n, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if n >= MAX_OPS:
                return (f"its pickled structure has more than {MAX_OPS:,} opcodes (a checkpoint "
                        "of the paper's network has about 10^5)")
            name = op.name
            if name == "STOP":
                break
            if name == "MARK":
                stack.append(_MARK)
            elif name in ("PROTO", "FRAME", "READONLY_BUFFER"):
                continue
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(arg)])
            elif name in _CONTAINERS:
                items = hashed(name, pop_mark())
                stack.append(node(1 + sum(i[0] for i in items)))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                items, stack[-k:] = stack[-k:], []
                stack.append(node(1 + sum(i[0] for i in items)))
            elif name in _APPEND_TO_TOP:
                items = hashed(name, pop_mark())
                stack[-1][0] = node(stack[-1][0] + sum(i[0] for i in items))[0]
            elif name in ("APPEND", "SETITEM", "BUILD"):
                items = [stack.pop() for _ in range(2 if name == "SETITEM" else 1)]
                if name == "SETITEM":
                    keys_ok(items[1:])
                stack[-1][0] = node(stack[-1][0] + sum(i[0] for i in items))[0]
            elif name == "GLOBAL":  # (the name is kept: set() and Counter() hash their items)
                stack.append([1, str(arg)])
            elif name == "STACK_GLOBAL":
                qual, module = stack.pop(), stack.pop()
                stack.append([1, f"{module[1:2] and module[1]} {qual[1:2] and qual[1]}"])
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                stack.append([1, str(arg)])
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                if func[1:] and func[1] in _HASHING and args[0] > MAX_KEY_VALUES + 2:
                    raise KeyError(args[0])
                stack.append(node(1 + args[0]))
            else:  # constants, NEWOBJ, persistent ids: by the opcode's arity
                before = op.stack_before
                if pickletools.markobject in before:
                    taken = pop_mark()
                else:
                    taken, stack[len(stack) - len(before):] = (
                        stack[len(stack) - len(before):] if before else [], [])
                size = 1 + sum(i[0] for i in taken if i is not _MARK)
                stack.extend(node(size) for _ in op.stack_after)
    except OverflowError:
        return (f"an object in its pickled structure expands to more than {MAX_VALUES:,} values "
                "(parts shared over and over: a decompression bomb)")
    except KeyError as err:
        if err.args and isinstance(err.args[0], int) and err.args[0] > MAX_KEY_VALUES:
            return (f"a dictionary key or set item in its pickled structure is made of "
                    f"{err.args[0]:,}+ values (hashing it would not end: a hash bomb)")
        return None  # a memo reference to nothing: torch.load says what is wrong
    except (ValueError, IndexError, TypeError):  # not a pickle we can follow: torch.load says
        return None
    return None
