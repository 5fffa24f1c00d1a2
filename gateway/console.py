"""What both command lines share: running a command and turning failures into exit codes.

Kept apart from gateway/cli.py, so that ``bluezone-central`` does not import the gateway's
scanner, web and daemon modules at every start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from gateway.model import GatewayError


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
