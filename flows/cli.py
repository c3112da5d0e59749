"""The ``alpha`` console script.

Each sub-command lives in its own module exposing ``register(subparsers)`` and
``run(args) -> int``; modules are imported lazily so that ``alpha train`` never
pays for importing Prefect or Dash.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("flows.cli_train", "train a GPT model (add --symbio for Symbio mode)"),
    "sample": ("flows.cli_train", "generate text from a checkpoint"),
    "runs": ("flows.cli_lake", "list runs in the metric lake"),
    "lake": ("flows.cli_lake", "lake maintenance (flush the local spool)"),
    "dashboard": ("flows.cli_dashboard", "serve the Dash dashboard on a lake"),
    "submit": ("flows.cli_submit", "submit a run to a Prefect work pool"),
}


class CliError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"alpha {self.prog.split()[-1]}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _print_usage(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = OneLineParser(prog=f"alpha {name}", description=COMMANDS[name][1])
    module.register(name, parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(name, args) or 0)
    except CliError as exc:
        print(f"alpha {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from model.signals import EXIT_SIGTERM, Terminated

        if isinstance(exc, Terminated):
            print(f"alpha {name}: cancelled by SIGTERM", file=sys.stderr)
            return EXIT_SIGTERM
        print(f"alpha {name}: interrupted", file=sys.stderr)
        return 130


def _print_usage(argv: list[str]) -> None:
    if argv and argv[0] not in ("-h", "--help"):  # bad input: one line
        print(
            f"alpha: error: unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)})",
            file=sys.stderr,
        )
        return
    print("usage: alpha <command> [options]\n\ncommands:")
    for name, (_, help_) in COMMANDS.items():
        print(f"  {name:<10} {help_}")


if __name__ == "__main__":
    # ``python -m flows.cli``: run the importable module, whose CliError the
    # sub-commands raise (this file's own copy, ``__main__``, has another class).
    from flows import cli

    sys.exit(cli.main())
