"""What both command lines share: their subcommands' shape, and failures into exit codes.

Kept apart from gateway/cli.py, so that ``bluezone-central`` does not import the gateway's
scanner, web and daemon modules at every start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable

from gateway import __version__
from gateway.model import GatewayError

CommandMaker = Callable[[str, str, str], argparse.ArgumentParser]
"""(name, summary, examples) → the subcommand's parser."""


def subcommands(parser: argparse.ArgumentParser) -> CommandMaker:
    """Give ``parser`` --version, --debug and subcommands; return what makes each subcommand.

    Every subcommand gets the summary as its help and description, its examples as the
    epilog, and accepts --debug after its name too.
    """
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="log debug lines; tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"examples:\n{examples}",
        )
        p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        return p

    return command


def dispatch(args: argparse.Namespace, program: str) -> int:
    """Run ``args.func`` and turn what it raises into the exit codes scripts rely on.

    Shared by ``bluezone-gateway`` and ``bluezone-central``: a `GatewayError` is one line on
    stderr and exit 2 (a traceback with ``--debug``), Ctrl-C is 130, a closed pipe is fine.
    """
    try:
        return int(args.func(args))
    except GatewayError as e:
        if args.debug:
            raise
        print(f"{program} {args.command}: {e}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `bluezone-gateway events | head`: the reader left; not an error worth a traceback.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
