"""The `simulate` subcommand: runs the simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

from exporter.logsetup import add_log_flags, setup_logging
from exporter.simulator.app import Simulator
from exporter.simulator.faults import FAULT_NAMES, FaultConfigError, parse_fault_flag
from exporter.simulator.settings import (
    DEFAULT_API_KEY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    SimulatorSettings,
)

logger = logging.getLogger(__name__)

DEFAULT_LISTEN_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
DESCRIPTION = (
    "Serve an imitation of the LemonData async task API: create tasks with POST "
    "/v1/images/generations, poll them, inject faults, and read the ground truth from "
    "/_sim/ground_truth. Every endpoint, fault and a worked example: docs/simulator.md."
)


def _listen_address(text: str) -> str:
    """argparse type: a bad address is refused before anything starts."""
    try:
        parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        type=_listen_address,
        default=DEFAULT_LISTEN_ADDRESS,
        metavar="HOST:PORT",
        help=f"where the simulated API listens (default {DEFAULT_LISTEN_ADDRESS}; port 0 = any)",
    )
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=None,
        metavar="KEY[=RPM]",
        help=f"an accepted API key, repeatable (default: only {DEFAULT_API_KEY!r}); "
        "KEY=RPM makes it an account of its own: its own limit, requests per real minute "
        "(0: none), and its own tasks (the other keys are one shared account)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="divide task durations and retention by this (60: a 90 s task takes 1.5 s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for task plans and ids")
    parser.add_argument(
        "--rate-limit-per-minute",
        type=int,
        default=1000,
        help="requests per key per real minute, 0 = unlimited (default 1000)",
    )
    parser.add_argument(
        "--retention-seconds",
        type=float,
        default=3600.0,
        help="simulated seconds a finished task stays readable before 404 (default 3600)",
    )
    parser.add_argument(
        "--lost-fraction",
        type=float,
        default=0.02,
        help="fraction of tasks that vanish (404) before finishing (default 0.02)",
    )
    parser.add_argument(
        "--fault",
        dest="faults",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="enable a fault: NAME, NAME=PROBABILITY or NAME=JSON-OBJECT, repeatable; "
        f"names: {', '.join(FAULT_NAMES)}",
    )
    add_log_flags(parser)


def parse_listen_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6-host]:port` or `:port` (all interfaces)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        hint = f"; write :{text} (every interface) or 127.0.0.1:{text}" if text.isdigit() else ""
        raise ValueError(f"listen address needs a port: {text!r}{hint}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad port in listen address {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in listen address {text!r}")
    return host or "0.0.0.0", port


def parse_key_flag(flag: str) -> tuple[str, int | None]:
    """`KEY` or `KEY=RPM` -> (key, its own limit or None)."""
    key, sep, limit = flag.rpartition("=")
    if sep and key and limit.isdigit():
        return key, int(limit)
    return flag, None


def settings_from_args(args: argparse.Namespace) -> SimulatorSettings:
    """Raises ValueError (FaultConfigError included) on bad flags."""
    host, port = parse_listen_address(args.listen_address)
    keys = [parse_key_flag(flag) for flag in args.api_keys or []]
    faults: dict[str, object] = {}
    for flag in args.faults or []:
        name, value = parse_fault_flag(flag)
        faults[name] = value
    return SimulatorSettings(
        host=host,
        port=port,
        api_keys=tuple(key for key, _ in keys) if keys else (DEFAULT_API_KEY,),
        key_limits={key: limit for key, limit in keys if limit is not None},
        time_scale=args.time_scale,
        seed=args.seed,
        rate_limit_per_minute=args.rate_limit_per_minute,
        retention_seconds=args.retention_seconds,
        lost_fraction=args.lost_fraction,
        faults=faults,
    )


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Serves until SIGINT/SIGTERM (or until `stop` is set); returns an exit code."""
    setup_logging(args.log_level, args.log_format)
    try:
        settings = settings_from_args(args)
        simulator = Simulator(settings)
    except (ValueError, FaultConfigError) as exc:
        logger.error("invalid simulator settings: %s", exc)
        return 2
    try:
        simulator.start()
    except OSError as exc:
        logger.error(
            "cannot listen on %s: %s; choose another address with --web.listen-address",
            args.listen_address,
            exc.strerror or exc,
        )
        return 1
    stop = stop or threading.Event()
    previous = _install_signal_handlers(stop)
    logger.info(
        "simulator listening on %s (time scale %g, seed %d, %d API key(s), faults: %s)",
        simulator.url,
        settings.time_scale,
        simulator.seed,
        len(settings.api_keys),
        ", ".join(simulator.faults()) or "none",
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        _restore_signal_handlers(previous)
        simulator.stop()
        logger.info("simulator stopped")
    return 0


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # signals can only be handled in the main thread
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, on_signal)
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
