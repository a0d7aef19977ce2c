"""An ``argparse.ArgumentParser`` whose usage errors are one line, like every other error of the
commands (README, exit codes): argparse prints its whole usage block (up to 20 lines) before the
message, which buried the one line that says what is wrong."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose ``error`` prints ``<prog>: error: <message> (see --help)`` and
    exits with status 2 (argparse's own status for a usage error)."""

    def error(self, message: str) -> NoReturn:
        """One line naming the problem, with the prefix the command's other errors use
        (``plan: error:``, ``sweeps.run: error:``); ``--help`` still prints the full usage."""
        name = self.prog.removeprefix("python -m ")
        for package in ("planning.", "datamodules."):
            name = name.removeprefix(package)
        self.exit(2, f"{name}: error: {message} (see --help)\n")
