"""Reading a YAML file a user hands us (``--config``, review thresholds, a phantom config) safely.

``yaml.safe_load`` builds plain values only (a ``!!python/...`` tag is an error, never run), but
a small file can still cost without bound: a 2 GB file is read whole (train took 30 s and
4.6 GB to say it was not YAML), and aliases (the "billion laughs") turn 1 kB into a tree of
10^9 values once a consumer walks or prints it (jsonargparse hung; a repr in an error message
never finished). :func:`read_yaml` refuses both before anyone walks the tree, and turns every
problem (missing, a folder, a FIFO, not UTF-8, not YAML, nested too deeply) into one
:class:`ConfigFileError` line naming the file. Plain Python and PyYAML, no torch; it lives in
``datamodules`` (the lowest layer that reads files) so phantom configs can use it too.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamodules.decoder_messages import printable

# Our configs are a few kB; these leave room for any hand-written one.
MAX_CONFIG_BYTES = 1024**2
MAX_CONFIG_VALUES = 100_000  # values of the tree with every alias expanded
# Digits an integer scalar may be written with (any base; sign, prefix, ``_`` and ``:`` not
# counted), checked before PyYAML converts it: int() refuses more than 4300 decimal digits
# (a ValueError), and a YAML 1.1 base-60 integer (``1:59:59:...``) costs quadratic time (a
# 900 kB one: 45 s). Every integer a float can hold fits (2**1023 takes 1024 binary digits);
# one with more digits but a smaller value is zero-padded, which no config needs.
MAX_NUMBER_DIGITS = 1100
_LOG10_2 = 0.30102999566398120
# what the values PyYAML's constructors convert are called in the messages
_TAG_WORDS = {"int": "an integer", "float": "a number", "timestamp": "a date", "bool": "a boolean",
              "binary": "base64 data"}


class ConfigFileError(ValueError):
    """A YAML file that cannot or must not be used; the message is one line naming the file."""


class _NumberTooLong(Exception):
    """An integer scalar written with more than ``MAX_NUMBER_DIGITS`` digits (not a ValueError,
    so the constructor wrapper below lets it through with its own message)."""

    def __init__(self, digits: int, text: str, line: int):
        super().__init__(text)
        self.digits, self.text, self.line = digits, text, line


class _BadScalar(Exception):
    """A scalar PyYAML's constructor failed on (``2020-13-45``, ``!!int abc``): its line, its
    text, what it was to be read as and why not."""

    def __init__(self, line: int, text: str, tag: str, why: str):
        super().__init__(why)
        self.line, self.text, self.tag, self.why = line, text, tag, why


def decimal_digits(value: int) -> int:
    """Decimal digits of ``abs(value)``, from its bit length: ``len(str(value))`` raises
    ValueError past 4300 digits (and costs quadratic time before that)."""
    n = abs(value)
    digits = max(1, int(n.bit_length() * _LOG10_2))  # at most one below the true count
    while n >= 10**digits:
        digits += 1
    return digits


def _leading_digits(value: int, count: int = 12) -> str:
    """The first ``count`` characters of ``str(value)`` (sign included) without ``str()`` of
    the whole number."""
    sign = "-" if value < 0 else ""
    n, digits = abs(value), decimal_digits(value)
    keep = count - len(sign)
    return sign + str(n // 10 ** (digits - keep) if digits > keep else n)


def _scan(data: Any, limit: int) -> tuple[bool, int | None]:
    """(whether ``data`` with every alias expanded holds more than ``limit`` values, its first
    integer too large for a float or None).

    Walks at most ``limit`` values (shared and self-referencing nodes are counted each time
    they are reached, as a consumer walking the tree would). ``float()`` raises OverflowError on
    such an integer: 401 digits crashed jsonargparse and every threshold check.
    """
    stack, seen, huge = [data], 0, None
    while stack:
        seen += 1
        if seen > limit:
            return True, huge
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set):
            stack.extend(item)
        elif huge is None and isinstance(item, int) and not isinstance(item, bool):
            try:
                float(item)  # (2**1024 - 2**970 and above round past the largest float)
            except OverflowError:
                huge = item
    return False, huge


def _unique_key_loader() -> Any:
    """PyYAML's SafeLoader refusing a key written twice in one mapping (it keeps the last one
    silently: ``max_tilt_deg`` given twice applied whichever came last). Merge keys (``<<``)
    may still be overridden, as YAML intends."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value[:40]!r} is given twice",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            # int(), float() and datetime refuse some scalars the resolver let through
            # (``2020-13-45``, ``!!int abc``, ``1:00:...:0.0`` past a float): a ValueError or
            # OverflowError without the line, a traceback in train; an empty ``!!int ''`` and a
            # ``!!timestamp abc`` fail with IndexError / AttributeError
            try:
                return super().construct_object(node, deep)
            except (ValueError, OverflowError, IndexError, AttributeError, TypeError) as err:
                text = node.value if isinstance(node, yaml.ScalarNode) else ""
                raise _BadScalar(node.start_mark.line + 1, str(text), node.tag.rsplit(":", 1)[-1],
                                 str(err) or type(err).__name__) from None

        def construct_yaml_int(self, node: Any) -> Any:
            # counted before converting: see MAX_NUMBER_DIGITS
            text = str(self.construct_scalar(node))
            body = text.replace("_", "").lstrip("+-")
            if body[:2].lower() in ("0x", "0b"):
                body = body[2:]
            digits = len(body) - body.count(":")
            if digits > MAX_NUMBER_DIGITS:
                raise _NumberTooLong(digits, text, node.start_mark.line + 1)
            return super().construct_yaml_int(node)

    UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", UniqueKeyLoader.construct_yaml_int)
    return UniqueKeyLoader


def read_text_file(path: str | Path, what: str = "config",
                   max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of the small file ``path``; :class:`ConfigFileError` when it is missing,
    not a regular file (a FIFO would block forever), larger than ``max_bytes`` (refused
    unread) or not UTF-8. ``what`` names the file's role in the messages."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as err:
        raise ConfigFileError(f"{p}: cannot read the {what} ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigFileError(f"{p}: cannot read the {what} (a folder, not a file)")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigFileError(f"{p}: cannot read the {what} (not a regular file: a pipe or "
                              "device?)")
    too_big = (f"{p}: larger than the {max_bytes // 1024} kB a {what} file may have: refused "
               "unread")
    if st.st_size > max_bytes:
        raise ConfigFileError(too_big)
    try:
        with p.open("rb") as fh:
            raw = fh.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as err:
        raise ConfigFileError(f"{p}: cannot read the {what} ({err.strerror or err})") from None
    if len(raw) > max_bytes:
        raise ConfigFileError(too_big)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{p}: the {what} is not UTF-8 text (byte {err.start})") from None


def read_yaml(path: str | Path, what: str = "config", max_bytes: int = MAX_CONFIG_BYTES,
              max_values: int = MAX_CONFIG_VALUES) -> Any:
    """The plain values of the YAML file ``path``; :class:`ConfigFileError` on any problem.

    ``what`` names the file's role in the messages (``"config"``, ``"review thresholds"``).
    """
    p = Path(path)
    return parse_yaml(read_text_file(p, what, max_bytes), str(p), what, max_values)


def parse_yaml(text: str, p: str, what: str = "config",
               max_values: int = MAX_CONFIG_VALUES) -> Any:
    """The plain values of the YAML ``text`` (``p`` names it in the messages: a file, or a
    checkpoint's stored config), with every guard of ``read_yaml``: repeated keys, numbers too
    long to convert (a 900 kB base-60 integer parsed for 45 s), scalars that cannot be read,
    alias bombs; :class:`ConfigFileError` on any problem."""
    import yaml

    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigFileError(f"{p}: not valid YAML{line} ({str(problem)[:120]})") from None
    except RecursionError:
        raise ConfigFileError(f"{p}: the {what} is nested too deeply") from None
    except _NumberTooLong as err:
        head = printable(err.text[:12])
        raise ConfigFileError(f"{p}: line {err.line}: a number written with {err.digits} digits "
                              f"({head}...) is too large to be read as a number: refused as "
                              f"{what}") from None
    except _BadScalar as err:
        kind = _TAG_WORDS.get(err.tag, f"!!{err.tag[:20]}")
        raise ConfigFileError(f"{p}: line {err.line}: {err.text!r:.40} cannot be read as "
                              f"{kind} ({printable(err.why[:120])}): refused as {what}") from None
    except (ValueError, OverflowError) as err:  # anything the wrapper above did not see
        raise ConfigFileError(f"{p}: a value cannot be read ({printable(str(err)[:120])}): "
                              f"refused as {what}") from None
    too_many, big = _scan(data, max_values)
    if too_many:
        raise ConfigFileError(f"{p}: more than {max_values} values once its YAML aliases are "
                              f"expanded (an alias bomb?): refused as {what}")
    if big is not None:
        raise ConfigFileError(f"{p}: a number of {decimal_digits(big)} digits "
                              f"({_leading_digits(big)}...) is too large to be read as a number: "
                              f"refused as {what}")
    return data


def check_config_file(path: str | Path) -> Mapping[str, Any] | None:
    """Raise :class:`ConfigFileError` for a training ``--config`` that is not a small YAML
    mapping, before jsonargparse reads it (it read a 2 GB file whole and walked a "billion
    laughs" alias tree for minutes); else its sections, as read (None: an empty file)."""
    data = read_yaml(path, what="config")
    if data is not None and not isinstance(data, Mapping):
        raise ConfigFileError(f"{path}: expected a mapping of sections (trainer:, model:, ...), "
                              f"got {type(data).__name__}")
    return data
