"""Red-team round 8, data side: an annotation's size is bounded by what it holds, not only by
its bytes (a 9.9 MB file of 1 000 000 cortex points took 15.7 s to validate, point by point),
and argparse's own errors carry the command's usual prefix (``plan: error:``)."""

from __future__ import annotations

import pytest

from datamodules.annotations import MAX_CORTEX_POINTS, MAX_RATERS, check_annotation
from datamodules.one_line_parser import OneLineParser
from tests.small_datasets import annotation


def test_a_cortex_line_of_a_million_points_is_one_error():
    line = [[12.0, 2.0 + 1e-5 * i] for i in range(1_000_000)]
    check = check_annotation(annotation(r_cortex_line=line), "k", "k.png", (40, 50))
    assert check.errors == [f"raters[0]: 'cortex_line' holds 1000000 points (at most "
                            f"{MAX_CORTEX_POINTS}: a line needs a few)"]
    at_cap = [[12.0, 2.0 + 20.0 * i / MAX_CORTEX_POINTS] for i in range(MAX_CORTEX_POINTS)]
    assert not check_annotation(annotation(r_cortex_line=at_cap), "k", "k.png", (40, 50)).errors


def test_too_many_raters_is_an_error_and_only_the_first_are_checked():
    one = annotation()["raters"][0]
    raters = [dict(one, rater=f"r{i}") for i in range(MAX_RATERS + 500)]
    check = check_annotation(annotation(raters=raters), "k", "k.png", (40, 50))
    assert check.errors == [f"'raters' holds {MAX_RATERS + 500} raters (at most {MAX_RATERS})"]
    assert not check_annotation(annotation(raters=raters[:MAX_RATERS]), "k", "k.png",
                                (40, 50)).errors


@pytest.mark.parametrize("prog, prefix", [("python -m planning.plan", "plan"),
                                          ("python -m planning.evaluate", "evaluate"),
                                          ("python -m datamodules.validate", "validate"),
                                          ("python -m sweeps.run", "sweeps.run")])
def test_argparse_errors_carry_the_commands_prefix(capsys, prog, prefix):
    parser = OneLineParser(prog=prog)
    parser.add_argument("--tta", type=int)
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--tta", "abc"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(lines) == 1, lines
    assert lines[0] == f"{prefix}: error: argument --tta: invalid int value: 'abc' (see --help)"
