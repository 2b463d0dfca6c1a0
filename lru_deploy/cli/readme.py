"""The README's generated parts, rendered from the same sources as `--help` and the code's defaults: the command
table (from the argparse parsers), and the init config's fields (from LRUConfig). A test keeps README.md equal
to these renderings; after changing a flag or a config field, run

    .venv/bin/python -m lru_deploy.cli.readme --write README.md
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
from pathlib import Path

BLOCKS = ("commands", "config")  # each README block sits between <!-- NAME:begin --> and <!-- NAME:end -->
HIDDEN = {"-h", "--overwrite", "--no-validate"}  # left out of the synopses (every writer takes --overwrite)


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of every subcommand, nested ones as 'import minimal-lru'."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = _subparsers(sub)
                out += [(f"{name} {n}", h, p) for n, h, p in nested] if nested else [(name, helps.get(name, ""), sub)]
    return out


def _option(a: argparse.Action) -> str:
    """`--flag DEFAULT` (the default shown where there is one), `--flag a|b|c`, `--flag METAVAR` or `--switch`."""
    flag = next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
    if a.nargs == 0:
        return flag
    if a.default is not None and not isinstance(a.default, bool):
        d = a.default
        if isinstance(d, tuple):  # a precision list, or lint's (major, minor)
            d = ".".join(map(str, d)) if all(isinstance(v, int) for v in d) else ",".join(d)
        return f"{flag} {d}"
    if a.choices:
        return f"{flag} {'|'.join(map(str, a.choices))}"
    return f"{flag} {a.metavar or a.dest.upper()}"


def _synopsis(name: str, parser: argparse.ArgumentParser) -> str:
    groups = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    parts, done = [f"lru-deploy {name}"], set()
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) or set(a.option_strings) & HIDDEN or id(a) in done:
            continue
        if not a.option_strings:  # positional
            meta = a.metavar or a.dest.upper()
            parts.append(f"[{meta}]" if a.nargs == "?" else meta)
        elif id(a) in groups:  # one of several: (a | b) when one is required, else [a | b]
            g = groups[id(a)]
            done |= {id(x) for x in g._group_actions}
            alt = " | ".join(_option(x) for x in g._group_actions)
            parts.append(f"({alt})" if g.required else f"[{alt}]")
        else:
            parts.append(_option(a) if a.required else f"[{_option(a)}]")
    return " ".join(parts)


def commands_table() -> str:
    from . import build_parser
    rows = ["| command | what it does |", "|---|---|"]
    for name, help_, sub in _subparsers(build_parser()):
        synopsis = _synopsis(name, sub).replace("|", "\\|")
        rows.append(f"| `{synopsis}` | {help_} |")
    return "\n".join(rows)


def config_fields() -> str:
    """LRUConfig's fields as a table (name, default, the comment beside the field in model.py) and the JSON
    `init --config` takes, with every default spelled out."""
    from ..model import LRUConfig
    comments, last = {}, None
    for line in inspect.getsource(LRUConfig).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=[^#]*?(?:#\s*(.*))?$", line)
        # a continuation: indented past the fields, or its text aligned under the comment above (`#   text`);
        # a comment at the fields' indent with one space (`# The options below`) starts a new block
        cont = re.match(r"(?:\s{5,}#\s*|\s+#\s{2,})(.*)$", line)
        if m:
            last = m.group(1) if m.group(2) else None
            if last:
                comments[last] = m.group(2).strip()
        elif cont and last:  # a comment carried on to the next lines
            comments[last] += " " + cont.group(1).strip()
        else:
            last = None
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(LRUConfig):
        default = json.dumps(f.default if f.default is not dataclasses.MISSING else None)
        rows.append(f"| `{f.name}` | `{default}` | {comments.get(f.name, '').replace('|', chr(92) + '|')} |")
    defaults = LRUConfig()
    example = json.dumps({k: getattr(defaults, k) for k in ("vocab_size", "d_model", "d_hidden", "n_layers",
                                                            "d_output")})
    return ("`lru-deploy init --config C.json --out DIR` takes a JSON object with any of these fields (the rest "
            "keep their defaults; unknown fields are refused), for example\n\n```\n" + example + "\n```\n\n"
            + "\n".join(rows))


RENDER = {"commands": commands_table, "config": config_fields}


def render_into(text: str) -> str:
    """README text with every generated block replaced by its current rendering."""
    for name in BLOCKS:
        begin, end = f"<!-- {name}:begin (generated: python -m lru_deploy.cli.readme --write README.md) -->", \
            f"<!-- {name}:end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no {name} block ({begin} ... {end})")
        text = pattern.sub(lambda _: f"{begin}\n{RENDER[name]()}\n{end}", text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lru_deploy.cli.readme", description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="README", help="rewrite the generated blocks of this file in place")
    args = p.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(render_into(path.read_text()))
    else:
        print(commands_table() + "\n\n" + config_fields())
    return 0


if __name__ == "__main__":
    sys.exit(main())
