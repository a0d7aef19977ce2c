"""The searched hyper-parameters: beta (loss balance), alpha (GradNorm), optionally the lr.

Each sampled value becomes a LightningCLI override of the training entry, e.g.
`--model.beta=0.6`. Defaults follow the paper's search: beta in [0, 2], alpha in [0, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

# Sampled parameter -> LightningCLI key of `lightning_modules.train` (see configs/*.yaml).
CLI_KEYS = {"beta": "model.beta", "alpha": "model.alpha", "lr": "model.lr"}


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the sampled hyper-parameters.

    Args:
        beta: (low, high) of the uniform range of the loss weight beta.
        alpha: (low, high) of the uniform range of GradNorm's alpha.
        lr: (low, high) of the log-uniform network learning rate, or None to keep the config's.
    """

    beta: tuple[float, float] = (0.0, 2.0)
    alpha: tuple[float, float] = (0.0, 3.0)
    lr: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("beta", "alpha", "lr"):
            rng = getattr(self, name)
            if rng is None:
                continue
            low, high = rng
            if not low <= high:
                raise ValueError(f"search range {name}=[{low}, {high}]: low must be <= high")
        # GradNorm's alpha (the asymmetry) and the loss weight beta are >= 0: a negative alpha
        # pulls the task losses' training rates apart instead of together (training itself
        # refuses a negative beta, not a negative alpha)
        for name, what in (("alpha", "GradNorm's alpha"), ("beta", "the loss weight beta")):
            low = getattr(self, name)[0]
            if low < 0:
                raise ValueError(f"search range {name}=[{low}, {getattr(self, name)[1]}]: "
                                 f"{what} must be >= 0")
        if self.lr is not None and self.lr[0] <= 0:
            raise ValueError(f"search range lr={list(self.lr)}: log-uniform needs low > 0")

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """Sample (or read the enqueued values of) this trial's parameters."""
        params = {
            "beta": trial.suggest_float("beta", *self.beta),
            "alpha": trial.suggest_float("alpha", *self.alpha),
        }
        if self.lr is not None:
            params["lr"] = trial.suggest_float("lr", *self.lr, log=True)
        return params


def cli_overrides(params: dict[str, float]) -> list[str]:
    """`{"beta": 0.6}` -> `["--model.beta=0.6"]` for the training entry."""
    unknown = set(params) - set(CLI_KEYS)
    if unknown:
        raise KeyError(f"no training option for sampled parameter(s) {sorted(unknown)}")
    return [f"--{CLI_KEYS[name]}={value!r}" for name, value in params.items()]
