"""Entry point of the ``gpuflow`` command (placeholder until the grad subcommand lands)."""

import sys


def main(argv=None) -> int:
    print("gpuflow: no subcommand is available yet", file=sys.stderr)
    return 2
