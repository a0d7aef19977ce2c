"""Which classes a training config may name, checked before jsonargparse reads it.

jsonargparse imports whatever a ``class_path`` (or a dotted name, or the short name of a class
already imported) in a class-typed trainer field names, and calls dotted callables given as
their arguments: a config file imported a module (``this.Whatever`` ran its code), had
``LambdaCallback(on_fit_start=builtins.print)`` called, and a profiler wrote outside the run
folder (red-team round 9). Config files are data, so a config may name only Lightning's own
callbacks that run no user code and write nothing (``CONFIG_CALLBACKS``); strategies,
accelerators, profilers and precisions go by their registry names (``ddp``, ``simple``).
Code that needs another callback passes it to ``train.fit(callbacks=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from datamodules.config_file import ConfigFileError, parse_yaml

CONFIG_CALLBACKS = frozenset({
    "EarlyStopping", "LearningRateMonitor", "ModelSummary", "RichModelSummary",
    "TQDMProgressBar", "RichProgressBar", "Timer", "StochasticWeightAveraging",
    "GradientAccumulationScheduler", "DeviceStatsMonitor",
})  # fmt: skip
CALLBACK_MODULES = ("pytorch_lightning.callbacks", "lightning.pytorch.callbacks")
# trainer fields whose values jsonargparse may resolve to classes
CLASS_FIELDS = ("callbacks", "logger", "profiler", "plugins", "strategy", "accelerator",
                "precision")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
MAX_INLINE_CHARS = 100_000  # a YAML/JSON value on the command line


def _allowed_class(name: str) -> bool:
    module, _, short = name.rpartition(".")
    return short in CONFIG_CALLBACKS and module in ("", *CALLBACK_MODULES)


def _values(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every (place, value) inside ``value``, mappings and lists walked (bounded by the
    config reader's value count)."""
    stack = [(where, value)]
    while stack:
        place, v = stack.pop()
        yield place, v
        if isinstance(v, Mapping):
            stack += [(f"{place}.{k}", x) for k, x in v.items()]
        elif isinstance(v, list):
            stack += [(f"{place}[{i}]", x) for i, x in enumerate(v)]


def trainer_class_problem(trainer: Any, where: str = "trainer") -> str | None:
    """Why the ``trainer`` section names a class a config may not, or None: a ``class_path``
    anywhere (only in ``callbacks``, only ``CONFIG_CALLBACKS``), a callback by name, or a dotted
    name in a class-typed field (arguments of an allowed callback take no callables)."""
    if not isinstance(trainer, Mapping):
        return None
    for key, field in trainer.items():
        for place, v in _values(field, f"{where}.{key}"):
            if isinstance(v, Mapping) and "class_path" in v and (
                    key != "callbacks" or not _allowed_class(str(v["class_path"]))):
                return _refusal(place, str(v["class_path"]))
        if key not in CLASS_FIELDS:
            continue
        items = field if isinstance(field, list) else [field]
        for k, v in enumerate(items):  # the field's own strings: a class or a registry name
            if not isinstance(v, str):
                continue
            name = v.strip()
            place = f"{where}.{key}" + (f"[{k}]" if isinstance(field, list) else "")
            if key == "plugins" or (key == "callbacks" and not _allowed_class(name)):
                return _refusal(place, name)  # (plugins by name are classes too)
            if key != "callbacks" and _DOTTED.fullmatch(name):
                return _refusal(place, name)
    return None


def _refusal(place: str, name: str) -> str:
    return (f"{place} names {name!r:.80}: a config may name only Lightning's callbacks "
            f"{', '.join(sorted(CONFIG_CALLBACKS))} (strategies, profilers, accelerators and "
            "precisions by name, e.g. ddp, simple; other code: train.fit(callbacks=...))")


SECTIONS = ("trainer", "model", "data", "run")  # the config's sections (mappings)


def _section_file(place: str, value: Any) -> str:
    return (f"{place} is given as {str(value)[:80]!r}, not as its settings: a section read "
            "from another file would pass none of the config file checks (size, aliases, "
            "classes); write the settings themselves, or pass that file with --config")


def check_config_classes(path: str, config: Mapping[str, Any] | None) -> None:
    """ConfigFileError when ``config`` (the config file ``path``, as ``check_config_file``
    read it) names a class it may not, or gives a section as the name of another file
    (jsonargparse reads that file unchecked: review of session 29, where ``make train RESUME=``
    came to read the run folder's own config.yaml)."""
    if config is None:
        return
    for key in SECTIONS:
        if key in config and config[key] is not None and not isinstance(config[key], Mapping):
            raise ConfigFileError(f"{path}: {_section_file(key, config[key])}")
    if problem := trainer_class_problem(config.get("trainer")):
        raise ConfigFileError(f"{path}: {problem}")


def check_argv_classes(argv: list[str]) -> None:
    """ConfigFileError when a ``--trainer`` override names a class it may not (``--trainer`` as
    a whole, ``--trainer.<field>`` of ``CLASS_FIELDS``, ``...class_path``; ``=`` or a space)."""
    for i, token in enumerate(argv):
        flag, eq, value = token.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if flag.removeprefix("--") in SECTIONS and value.lstrip()[:1] not in ("[", "{"):
            raise ConfigFileError(f"command line: {_section_file(flag, value)}")
        if not token.startswith("--trainer"):
            continue
        parts = flag.removeprefix("--").rstrip("+").split(".")
        if parts[0] != "trainer" or (len(parts) > 1 and parts[1] not in CLASS_FIELDS):
            continue
        if len(parts) > 2 and parts[-1] != "class_path":
            continue  # an argument of the field's class (allowed classes take no callables)
        if len(value) > MAX_INLINE_CHARS:
            raise ConfigFileError(f"command line: {flag} is given {len(value):,} characters "
                                  f"(at most {MAX_INLINE_CHARS:,})")
        inline = value.lstrip()[:1] in ("[", "{")  # YAML/JSON, read with the config's guards
        parsed = parse_yaml(value, f"command line {flag}") if inline else value
        if len(parts) == 1:
            section = parsed
        elif len(parts) == 2:
            section = {parts[1]: parsed}
        else:
            section = {parts[1]: {"class_path": value}}
        if problem := trainer_class_problem(section):
            raise ConfigFileError(f"command line: {problem}")
