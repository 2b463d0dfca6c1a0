"""Argument types and checks shared by several subcommands, so that a flag means the same everywhere."""
from __future__ import annotations

from ..errors import InputError


def precision_list(text: str) -> tuple[str, ...]:
    """`--precision` in every command: a comma-separated list (checked by the command's options, which name the
    valid precisions)."""
    return tuple(p.strip() for p in str(text).split(","))


def one_precision(precisions, what: str) -> str:
    """The single precision a command runs (generate, run, build), or one error naming the valid ones."""
    from ..contract import PRECISIONS
    from ..export import precision_problems
    problems = precision_problems(precisions, one=True)
    if problems:
        raise InputError(f"--precision {','.join(precisions)}: {what} runs one precision:",
                         f"pass one of {', '.join(PRECISIONS)} that the folder holds (lru-deploy info FOLDER "
                         f"lists them)", problems)
    return precisions[0]
