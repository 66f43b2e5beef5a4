"""`python -m exporter.simulator`: the simulator on its own."""

from __future__ import annotations

import argparse
import sys

from exporter.simulator.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="Imitation of the LemonData async task API, for demos, tests and benchmarks.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
