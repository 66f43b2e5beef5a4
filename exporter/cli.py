"""Command line: `lemondata-exporter [run|check-config|demo|simulate|track]`.

Every flag is checked by argparse before anything starts (listen addresses
included), and every subcommand takes the same `--log.level` and `--log.format`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

from exporter import __version__
from exporter.config import (
    API_KEY_ENV,
    DEFAULT_CONFIG_FILE,
    DEFAULT_LISTEN_ADDRESS,
    ConfigError,
    check_config_file,
    listen_address_problem,
    read_account_keys,
    world_readable,
)
from exporter.logsetup import add_log_flags, add_secret, redact, setup_logging
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

    run = _command(
        commands,
        "run",
        "run the exporter (the default command)",
        "Poll the tasks named by the config file and serve their metrics on /metrics. "
        f"The API key comes from ${API_KEY_ENV} or api.key_file.",
    )
    _config_flag(run)
    add_listen_flag(run, DEFAULT_LISTEN_ADDRESS, "host:port to serve on (default %(default)s)")
    _web_config_flag(run)
    add_log_flags(run, level_default=None, level_help="default: log_level in the config")
    run.set_defaults(handler=_run)

    check = _command(
        commands,
        "check-config",
        "check a config file and exit",
        "Check a config file and everything it names (key and token files, the store's "
        "path, watched files, Redis), print every problem at once as FILE: FIELD: problem, "
        "and summarise what `run` would start. Exit 0 when `run` could start, 1 otherwise.",
    )
    _config_flag(check)
    add_listen_flag(check, DEFAULT_LISTEN_ADDRESS, "the address `run` would serve on")
    _web_config_flag(check)
    add_log_flags(check)
    check.set_defaults(handler=_with_logging(_check_config))

    demo = _command(
        commands,
        "demo",
        "the simulator, a stream of new tasks and the exporter, with no API key",
        "Start a simulator of the API, create tasks on it the way an application would, "
        "and run the exporter on them: live metrics within a minute, no API key needed.",
    )
    from exporter import demo as demo_module

    demo_module.add_arguments(demo)
    _web_config_flag(demo)
    add_log_flags(demo)
    demo.set_defaults(handler=demo_module.run)

    import exporter.simulator.cli as simulator_cli

    simulate = _command(
        commands,
        "simulate",
        "serve a simulator of the upstream API",
        simulator_cli.DESCRIPTION,
    )
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(handler=simulator_cli.run)

    from exporter import track as track_module

    track = _command(
        commands,
        "track",
        "register tasks with a running exporter's API",
        "Register task IDs with a running exporter over its task API (/api/v1/tasks); "
        "needs the exporter's token.",
    )
    track_module.add_arguments(track)
    add_log_flags(track)
    track.set_defaults(handler=_with_logging(track_module.run))
    return parser


def _with_logging(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def with_logging(args: argparse.Namespace) -> int:
        setup_logging(args.log_level, args.log_format)
        return handler(args)

    return with_logging


def _command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description
    )
    return parser


def listen_address(text: str) -> str:
    """argparse type for --web.listen-address: refused before anything starts."""
    problem = listen_address_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)  # without the text: it may be a secret
    return text


def add_listen_flag(parser: argparse.ArgumentParser, default: str, help_text: str) -> None:
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        type=listen_address,
        default=default,
        metavar="HOST:PORT",
        help=help_text,
    )


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
    from exporter.config_check import check_everything

    result = check_everything(args.config_file, args.web_config_file, args.listen_address)
    for line in result.problems + result.warnings:
        print(line, file=sys.stderr)
    if result.problems:
        return 1
    warned = f", {len(result.warnings)} warning(s)" if result.warnings else ""
    print(f"{args.config_file}: OK{warned}")
    for line in result.summary:
        print(f"  {line}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from exporter.api.auth import TokenError, read_token
    from exporter.serve import serve
    from exporter.web.security import load_web_security

    source = str(args.config_file)
    report = check_config_file(source)
    try:
        if report.config is None:
            raise ConfigError(report.problems)
        config = report.config
        keys = read_account_keys(config, source=source)
        read_token(config)  # an unusable token stops the start here, before any logging
        web_security = load_web_security(args.web_config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except TokenError as exc:
        print(f"{source}: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.log_level, args.log_format)
    log = logging.getLogger("exporter")
    for warning in report.warnings:
        log.warning("%s", warning)
    for field_name, path in (
        ("api.key_file", config.api.key_file),
        ("api_server.token_file", config.api_server.token_file),
        *((f"accounts[{i}].key_file", a.key_file) for i, a in enumerate(config.accounts)),
    ):
        loose = world_readable(path) if path is not None else None
        if loose:
            log.warning("%s: %s: %s", source, field_name, loose)
    if not keys:
        print(
            f"no API key: set ${API_KEY_ENV} or api.key_file in {source}. "
            "To try the exporter without a key, run `lemondata-exporter demo`.",
            file=sys.stderr,
        )
        return 2
    for key in keys.values():
        add_secret(key.get_secret_value())
    try:
        return serve(config, keys, args.listen_address, source, web_security=web_security)
    except StoreError as exc:
        print(redact(str(exc)), file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. an unusable task API token
        print(redact(str(exc)), file=sys.stderr)
        return 2
