"""User-facing errors: one clear message, a hint, exit code 1 in the CLI (no traceback)."""
from __future__ import annotations

from typing import Iterable


class LRUDeployError(Exception):
    """An error the user can fix. `problems` lists every problem found, `hint` says what to do."""

    def __init__(self, message: str, hint: str = "", problems: Iterable[str] = ()):
        self.message = message
        self.hint = hint
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.message]
        lines += [f"  - {p}" for p in self.problems]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class ConfigError(LRUDeployError):
    pass


class CheckpointError(LRUDeployError):
    pass


class InputError(LRUDeployError):
    """Wrong shapes, dtypes or files handed to run/prefill/step."""


class ExportError(LRUDeployError):
    pass


class ParityError(LRUDeployError):
    pass


class EngineError(LRUDeployError):
    pass


class OutputError(LRUDeployError):
    """A destination that cannot or must not be written (it holds other data, it is a file, it is read-only)."""


class ManifestError(LRUDeployError):
    """A manifest.json that is missing, malformed, or disagrees with its folder."""
