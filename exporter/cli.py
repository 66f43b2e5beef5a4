"""Command line: `lemondata-exporter [run|simulate|demo|check-config]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

from exporter import __version__
from exporter.config import (
    API_KEY_ENV,
    DEFAULT_CONFIG_FILE,
    DEFAULT_LISTEN_ADDRESS,
    ConfigError,
    load_config,
    read_api_key,
)
from exporter.logsetup import add_secret, redact, setup_logging
from exporter.store.sqlite import StoreError

COMMANDS = ("run", "simulate", "demo", "check-config", "track")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")  # `run` is the default command
    args = _parser().parse_args(args_list)
    code = int(args.handler(args))
    if args.command in ("run", "demo"):
        _exit_without_abandoned_threads(code)
    return code


def _exit_without_abandoned_threads(code: int, grace: float = 1.0) -> None:
    """After a shutdown that abandoned polls still hanging upstream, exit now.

    The store is closed and the logs are written by then; waiting for those
    threads (the interpreter joins them at exit) could take a request timeout.
    """
    from concurrent.futures import thread as futures_thread

    # Joined at exit: non-daemon threads, and every worker of a ThreadPoolExecutor
    # (the poll workers are daemon threads, started from the scheduler's).
    pool_workers = set(getattr(futures_thread, "_threads_queues", {}))
    waited = [
        t
        for t in threading.enumerate()
        if t is not threading.current_thread() and (not t.daemon or t in pool_workers)
    ]
    deadline = time.monotonic() + grace
    for thread in waited:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in waited):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lemondata-exporter",
        description="Prometheus exporter for asynchronous generation tasks on the LemonData API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the exporter (the default command)")
    _config_flag(run)
    run.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN_ADDRESS,
        help="host:port to serve on (default %(default)s)",
    )
    run.add_argument(
        "--log.level",
        dest="log_level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="overrides log_level from the config",
    )
    _web_config_flag(run)
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    _config_flag(check)
    _web_config_flag(check)
    check.set_defaults(handler=_check_config)

    demo = commands.add_parser(
        "demo", help="the simulator, a stream of new tasks and the exporter, with no API key"
    )
    from exporter import demo as demo_module

    demo_module.add_arguments(demo)
    _web_config_flag(demo)
    demo.set_defaults(handler=demo_module.run)

    simulate = commands.add_parser("simulate", help="serve a simulator of the upstream API")
    import exporter.simulator.cli as simulator_cli

    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(handler=simulator_cli.run)

    track = commands.add_parser("track", help="register tasks with a running exporter's API")
    from exporter import track as track_module

    track_module.add_arguments(track)
    track.set_defaults(handler=track_module.run)
    return parser


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default=DEFAULT_CONFIG_FILE,
        help="configuration file (default %(default)s)",
    )


def _web_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        help="TLS and basic auth for every endpoint, in the Prometheus exporter-toolkit "
        "format (see docs/security.md)",
    )


def _check_config(args: argparse.Namespace) -> int:
    from exporter.api.auth import TokenError, read_token
    from exporter.web.security import load_web_security

    try:
        config = load_config(args.config_file)
        read_api_key(config)
        read_token(config)  # the task API's token, when one is set
        load_web_security(args.web_config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except TokenError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"{args.config_file}: OK ({len(config.tasks)} static task(s), "
        f"{len(config.discovery.files)} watched file(s))"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from exporter.agent import serve
    from exporter.web.security import load_web_security

    try:
        config = load_config(args.config_file)
        api_key = read_api_key(config)
        web_security = load_web_security(args.web_config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.log_level)
    if api_key is None:
        print(
            f"no API key: set ${API_KEY_ENV} or api.key_file in {args.config_file}. "
            "To try the exporter without a key, run `lemondata-exporter demo`.",
            file=sys.stderr,
        )
        return 2
    add_secret(api_key.get_secret_value())
    try:
        return serve(
            config,
            api_key,
            args.listen_address,
            str(args.config_file),
            web_security=web_security,
        )
    except StoreError as exc:
        print(redact(str(exc)), file=sys.stderr)
        return 1
    except ValueError as exc:  # a malformed --web.listen-address
        print(redact(str(exc)), file=sys.stderr)
        return 2
