"""Red-team round 8: phantom config values the generator cannot use. ``render_grid_px: 0`` (a
ZeroDivisionError), ``render_grid_px: 1.5`` / ``"x"`` / ``[1, 2]`` (TypeError), ``bits: []`` and
``bits: [100000]`` (numpy errors), unknown or all-zero/NaN ``styles`` weights were 20-line
tracebacks (exit 1) from ``python -m datamodules.phantoms`` and, through
``--data.phantom_overrides``, from training after its run folder was made; ``render_grid_px:
-5``, ``bits: [0]`` and a negative style weight were accepted and made wrong images silently.
Each is now one line naming the file (or the override) and the key, status 2, before any work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.phantoms.__main__ import main as phantoms_main
from datamodules.phantoms.config import FACTORS, PhantomConfig
from tests.test_untrusted_files import one_line

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
SHIPPED = sorted((REPO / "configs" / "phantoms").glob("*.yaml"))
SMALL = ["--min-side", "96", "--max-side", "128"]  # quick images when a config is accepted

# (YAML line, words the one-line message must hold)
BAD = [
    ("render_grid_px: 0", "PhantomConfig.render_grid_px: 0 is outside [64, 16384] px"),
    ("render_grid_px: -5", "PhantomConfig.render_grid_px: -5 is outside [64, 16384] px"),
    ("render_grid_px: 1", "PhantomConfig.render_grid_px: 1 is outside [64, 16384] px"),
    ("render_grid_px: 100000", "PhantomConfig.render_grid_px: 100000 is outside"),
    ("render_grid_px: 1.5", "PhantomConfig.render_grid_px: 1.5 is not a whole number of pixels"),
    ('render_grid_px: "x"', "PhantomConfig.render_grid_px: 'x' is not a whole number of pixels"),
    ("render_grid_px: [1, 2]", "PhantomConfig.render_grid_px: (1, 2) is not a whole number"),
    ("render_grid_px: true", "PhantomConfig.render_grid_px: True is not a whole number"),
    ("bits: []", "PhantomConfig.bits: an empty list: give at least one bit depth"),
    ("bits: [100000]", "PhantomConfig.bits: bit depth 100000 is not a whole number in [1, 16]"),
    ("bits: [0]", "PhantomConfig.bits: bit depth 0 is not a whole number in [1, 16]"),
    ("bits: [8, 17]", "PhantomConfig.bits: bit depth 17 is not a whole number in [1, 16]"),
    ("bits: [8.5]", "PhantomConfig.bits: bit depth 8.5 is not a whole number in [1, 16]"),
    ("bits: 8", "PhantomConfig.bits: 8 is not a list of bit depths"),
    ("styles: {bogus: 1.0}", "PhantomConfig.styles: unknown style(s) ['bogus']"),
    ("styles: {bogus: 0.0, physics: 1.0}", "PhantomConfig.styles: unknown style(s) ['bogus']"),
    ("styles: {physics: 0.0, classic: 0.0}", "PhantomConfig.styles: no style has a positive"),
    ("styles: {physics: .nan}", "PhantomConfig.styles: weight of physics nan must be a finite"),
    ("styles: {physics: .inf}", "PhantomConfig.styles: weight of physics inf must be a finite"),
    ("styles: {physics: -1.0, classic: 2.0}",
     "PhantomConfig.styles: weight of physics -1.0 must be a finite number >= 0"),
    ("styles: {}", "PhantomConfig.styles: {} is not a mapping of style: weight"),
    ("styles: [physics]", "PhantomConfig.styles: ('physics',) is not a mapping of style"),
    ('min_side: "x"', "PhantomConfig.min_side: 'x' is not a whole number of pixels >= 1"),
    # PyYAML (YAML 1.1) reads an exponent without a dot or without a sign as text
    ("scatter_sigma_mm: [1.0e9, 1.0e9]",
     "PhantomConfig.scatter_sigma_mm: '1.0e9' was read as text, not a number (YAML reads a "
     "number with an exponent only with a dot and a signed exponent): write 1.0e+9"),
    ("photons: [1e3, 2e3]", "PhantomConfig.photons: '1e3' was read as text, not a number"),
    ("p_metal: 1e-1", "PhantomConfig.p_metal: '1e-1' was read as text, not a number"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[t for t, _ in BAD])
def test_phantoms_cli_refuses_a_bad_value_in_one_line(text, expected, tmp_path, capsys):
    cfg = _write(tmp_path / "ph.yaml", text)
    out = tmp_path / "out"
    status = phantoms_main(["--out", str(out), "--n", "1", "--seed", "1", *SMALL,
                            "--config", str(cfg)])
    assert status == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"phantoms: error: {cfg}: "), line
    assert expected in line, line
    assert not out.exists()


@pytest.mark.parametrize(("fix", "value"), [("1.0e+9", 1.0e9), ("1.0e+3", 1.0e3),
                                            ("1.0e-1", 0.1)])
def test_the_suggested_spelling_is_read_as_a_number(fix, value, tmp_path):
    """The fix the message proposes is what YAML reads as the number meant."""
    key = "p_metal" if value < 1 else "scatter_sigma_mm"
    text = f"{key}: {fix}" if value < 1 else f"{key}: [{fix}, {fix}]"
    cfg = PhantomConfig.from_yaml(_write(tmp_path / "ph.yaml", text))
    got = getattr(cfg, key)
    assert got == (value if value < 1 else (value, value))


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"render_grid_px": 0}, "PhantomConfig.render_grid_px: 0 is outside"),
    ({"bits": []}, "PhantomConfig.bits: an empty list"),
    ({"styles": {"physics": float("nan")}}, "PhantomConfig.styles: weight of physics nan"),
    ({"styles": {"physics": -1.0, "classic": 2.0}}, "weight of physics -1.0 must be"),
])
def test_with_overrides_refuses_the_same_values(overrides, expected):
    with pytest.raises(ValueError) as err:
        PhantomConfig().with_overrides(overrides)
    assert expected in str(err.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("{render_grid_px: 0}", "PhantomConfig.render_grid_px: 0 is outside [64, 16384] px"),
    ("{bits: [100000]}", "PhantomConfig.bits: bit depth 100000 is not a whole number"),
    ("{styles: {bogus: 1.0}}", "PhantomConfig.styles: unknown style(s) ['bogus']"),
    ("{styles: {physics: -1.0, classic: 2.0}}", "weight of physics -1.0 must be"),
])
def test_training_refuses_a_bad_phantom_override_before_the_run_folder(
        override, expected, tmp_path, capsys):
    """Through training the same check runs on ``data.phantom_overrides`` before Lightning
    seeds or builds anything (was: a traceback at the first batch, a run folder left)."""
    from lightning_modules import train

    root = tmp_path / "r"
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", TINY, "--data.phantom_overrides", override,
                    "--trainer.max_epochs", "1", "--run.root", str(root), "--run.wandb",
                    "false"])
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert "data.phantom_overrides: " in line and expected in line, line
    assert not root.exists()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_phantom_configs_are_accepted(path, tmp_path, capsys):
    out = tmp_path / "out"
    assert phantoms_main(["--out", str(out), "--n", "1", "--seed", "1", *SMALL,
                          "--config", str(path)]) == 0
    assert any(out.rglob("*.png"))


@pytest.mark.parametrize("text", [
    "render_grid_px: 64", "render_grid_px: 16384", "bits: [1]", "bits: [16]", "bits: [8, 8]",
    "styles: {physics: 0.0, classic: 1}", "styles: {physics: 3}",
    "scatter_sigma_mm: [1.0e+9, 1.0e+9]", "min_side: 96\nmax_side: 128",
])
def test_boundary_values_are_accepted(text, tmp_path):
    PhantomConfig.from_yaml(_write(tmp_path / "ph.yaml", text))


def test_every_factor_switched_off_is_still_accepted():
    """``FACTORS`` values (styles, bits) pass the same rules when given as overrides."""
    for values in FACTORS.values():
        PhantomConfig().with_overrides(dict(values))
    PhantomConfig().with_overrides({"factors_off": sorted(set(FACTORS) - {"physics"})})
