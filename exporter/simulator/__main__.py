"""`python -m exporter.simulator`: the simulator on its own."""

from __future__ import annotations

import argparse
import sys

from exporter.simulator.cli import DESCRIPTION, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
