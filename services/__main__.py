"""`python -m services <command> ...`: one entry point for the shared tools.

Commands are imported only when chosen, so a broken or heavy command cannot slow the others.
Add one by mapping its name to "module:function"; the function takes argv and returns an exit
status.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, str] = {
    "token": "services.auth_cli:main",
}


def _load(target: str) -> Callable[[Sequence[str]], int]:
    module_name, _, function_name = target.partition(":")
    command: Callable[[Sequence[str]], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    return command


def _usage() -> str:
    return f"usage: python -m services {{{','.join(sorted(COMMANDS))}}} [args...]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    if args[0] not in COMMANDS:
        print(f"unknown command {args[0]!r}\n{_usage()}", file=sys.stderr)
        return 2
    return _load(COMMANDS[args[0]])(args[1:])


if __name__ == "__main__":
    sys.exit(main())
