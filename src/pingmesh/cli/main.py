"""``pingmesh``: the command line.

Every command exits 0 on success, 2 on bad usage or bad input (with one line that names the
file, line or field at fault), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from pingmesh import __version__
from pingmesh.errors import InputError, PingmeshError, UnknownServerError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as argparse does, plus a hint
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pingmesh",
        description="Is it the network, and where? Latency and loss between every pair of "
        "servers that matters, as SLAs, heatmaps and incidents.",
    )
    parser.add_argument("--version", action="version", version=f"pingmesh {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    server = commands.add_parser(
        "server", help="run controller, collector, analysis and web in one process"
    )
    server.add_argument("--config", type=Path, help="YAML config file (section 'server')")
    server.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    server.add_argument("--data", type=Path, metavar="DIR", help="data directory")
    server.add_argument("--topology", type=Path, metavar="FILE", help="topology (YAML or CSV)")
    server.add_argument(
        "--db", metavar="URL", help="results DB: postgresql://… (default: SQLite in --data)"
    )
    server.add_argument(
        "--quic-listen", metavar="HOST:PORT", help="accept agents' uploads over QUIC (UDP)"
    )
    server.add_argument("--version", action="version", version=f"pingmesh {__version__}")

    agent = commands.add_parser("agent", help="probe peers, answer probes, upload results")
    source = agent.add_mutually_exclusive_group()
    source.add_argument("--controller", metavar="URL", help="controller base URL")
    source.add_argument(
        "--pinglist", type=Path, metavar="FILE", help="standalone: a static pinglist (JSON)"
    )
    agent.add_argument("--name", help="this server's name (or address) in the topology")
    agent.add_argument("--bind", metavar="ADDR", help="address to probe from and answer on")
    agent.add_argument("--results", metavar="FILE|-", help="also write every probe as a JSON line")
    agent.add_argument("--config", type=Path, help="YAML config file (section 'agent')")
    agent.add_argument(
        "--spool", type=Path, metavar="DIR", help="keep result batches on disk until uploaded"
    )
    agent.add_argument(
        "--max-probe-rate", type=float, metavar="N", help="probes per second, all peers"
    )
    agent.add_argument("--quic", metavar="HOST:PORT", help="upload over QUIC to this server")
    agent.add_argument("--ca-file", type=Path, metavar="FILE", help="CA that signed the server")
    agent.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="this agent's token, from 'pingmesh token --agent NAME' on the server",
    )
    agent.add_argument("--alias", help="a label for people (default: --name)")
    agent.add_argument("--version", action="version", version=f"pingmesh {__version__}")

    demo = commands.add_parser("demo", help="a whole fleet on loopback, with the dashboard")
    demo.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080")
    demo.add_argument("--data", type=Path, metavar="DIR", help="default: a new temporary dir")
    demo.add_argument("--dcs", type=int, default=2)
    demo.add_argument("--podsets", type=int, default=2, help="podsets per DC")
    demo.add_argument("--tors", type=int, default=2, help="ToRs per podset")
    demo.add_argument("--servers", type=int, default=4, help="servers per ToR")
    demo.add_argument("--interval", type=float, default=5.0, help="per-pair probe interval, s")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--version", action="version", version=f"pingmesh {__version__}")

    token = commands.add_parser(
        "token",
        help="print the token that proves an agent's identity to the server (QUIC and HTTP)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Print the token that proves an agent's identity to the server:\n"
            "HMAC-SHA256 of the agent's name under the server's agent secret. The server\n"
            "checks it on QUIC's hello and on HTTP uploads of bandwidth reports; a token\n"
            "names one agent only. Give it to the agent with\n"
            "'pingmesh agent --token-file FILE' (or agent.transport.token_file).\n\n"
            "The secret is the server's agent_secret_file, else TLS_DIR/agent-secret\n"
            "(default DATA/tls/agent-secret), made at the server's first start with\n"
            "--quic-listen. This command never makes one."
        ),
        epilog=(
            "example:\n  umask 077\n  pingmesh token --agent h11 --data pingmesh-data > h11.token"
        ),
    )
    token.add_argument(
        "--agent",
        metavar="NAME",
        required=True,
        help="the agent's --name (its topology name or address)",
    )
    secret = token.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret-file", type=Path, metavar="FILE", help="the server's agent secret (hex)"
    )
    secret.add_argument(
        "--config", type=Path, metavar="FILE", help="the server's YAML config (section 'server')"
    )
    token.add_argument(
        "--data", type=Path, metavar="DIR", help="the server's data directory (its --data)"
    )
    token.add_argument("--version", action="version", version=f"pingmesh {__version__}")

    pinglist = commands.add_parser("pinglist", help="print one server's pinglist (JSON)")
    pinglist.add_argument("--topology", type=Path, metavar="FILE", required=True)
    pinglist.add_argument("--server", metavar="NAME", required=True, help="name or address")
    pinglist.add_argument("--config", type=Path, help="YAML config file (section 'server')")
    pinglist.add_argument("--version", action="version", version=f"pingmesh {__version__}")

    from pingmesh.lab.console import add_lab_parser  # argparse only; the lab loads on use

    add_lab_parser(commands, version=__version__)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aioquic logs every handshake and close at INFO: one line per agent per reconnect.
    logging.getLogger("quic").setLevel(max(logging.WARNING, logging.getLogger().level))
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "server": _server,
        "agent": _agent,
        "demo": _demo,
        "pinglist": _pinglist,
        "token": _token,
        "lab": _lab,
    }
    try:
        return handlers[args.command](args)
    except (InputError, UnknownServerError) as exc:
        print(f"pingmesh {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PingmeshError as exc:
        print(f"pingmesh {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def run_until_signalled(main_coro: Coroutine[Any, Any, None]) -> None:
    """Run ``main_coro`` until it ends or SIGINT/SIGTERM arrives, then cancel it cleanly."""

    async def runner() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await main_coro
        except asyncio.CancelledError:
            if task.cancelling() == 0:  # pragma: no cover - cancelled by someone else
                raise
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    asyncio.run(runner())


def _server(args: argparse.Namespace) -> int:
    from pingmesh.config import ServerConfig, build_config
    from pingmesh.server.app import PingmeshServer

    config = build_config(
        ServerConfig,
        args.config,
        "server",
        {
            "listen": args.listen,
            "data_dir": args.data,
            "topology": args.topology,
            "db": args.db,
            "quic_listen": args.quic_listen,
        },
    )
    server = PingmeshServer.from_config(config)
    server.bind()
    print(f"pingmesh server: dashboard and API at {server.url}", flush=True)
    run_until_signalled(server.run())
    return EXIT_OK


def _agent(args: argparse.Namespace) -> int:
    from pingmesh.agent.agent import Agent
    from pingmesh.agent.config import AgentConfig
    from pingmesh.config_file import build_config

    config = build_config(
        AgentConfig,
        args.config,
        "agent",
        {
            "controller": args.controller,
            "pinglist_file": args.pinglist,
            "name": args.name,
            "bind": args.bind,
            "results_file": args.results,
            "spool_dir": args.spool,
            "max_probe_rate": args.max_probe_rate,
        },
    )
    transport = {
        "quic": args.quic,
        "ca_file": args.ca_file,
        "token_file": args.token_file,
        "alias": args.alias,
    }
    if any(v is not None for v in transport.values()):
        config = build_config(
            AgentConfig,
            args.config,
            "agent",
            {
                **config.model_dump(exclude_unset=True),
                "transport": {
                    **config.transport.model_dump(exclude_unset=True),
                    **{k: v for k, v in transport.items() if v is not None},
                },
            },
        )
    if config.controller is None and config.pinglist_file is None:
        raise InputError("agent needs --controller URL or --pinglist FILE")
    if config.controller is not None and config.pinglist_file is not None:
        raise InputError("agent takes --controller or --pinglist, not both")
    agent = Agent(config)
    run_until_signalled(agent.run())
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from pingmesh.demo.fleet import DemoFleet, DemoShape

    shape = DemoShape(dcs=args.dcs, podsets=args.podsets, tors=args.tors, servers=args.servers)
    fleet = DemoFleet(shape, listen=args.listen, data_dir=args.data, interval_s=args.interval)
    run_until_signalled(fleet.run(duration_s=args.duration, announce=_announce))
    return EXIT_OK


def _announce(line: str) -> None:
    print(line, flush=True)


def _pinglist(args: argparse.Namespace) -> int:
    from pingmesh.config import ServerConfig, build_config
    from pingmesh.controller.service import PinglistService
    from pingmesh.controller.topology_source import TopologySource

    config = build_config(ServerConfig, args.config, "server", {})
    service = PinglistService(TopologySource.from_file(args.topology), config.pinglist)
    print(service.pinglist(args.server).model_dump_json(indent=2))
    return EXIT_OK


def _token(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pingmesh.config import ServerConfig, build_config
    from pingmesh.server.tls import agent_token, load_secret
    from pingmesh.wire.quic import HelloModel

    name: str = args.agent
    try:
        HelloModel(agent=name, token="-")  # noqa: S106 - validates the name as the server will
    except ValidationError as exc:
        raise InputError(f"--agent {name!r}: {exc.errors()[0]['msg']}") from exc
    if name != name.strip():
        raise InputError(f"--agent {name!r}: leading or trailing spaces")
    path: Path | None = args.secret_file
    if path is None:
        if args.config is None and args.data is None:
            raise InputError(
                "token needs the server's agent secret: --secret-file FILE, "
                "or the server's --config FILE or --data DIR"
            )
        config = build_config(ServerConfig, args.config, "server", {"data_dir": args.data})
        path = config.agent_secret_file or (config.tls_dir or config.data_dir / "tls") / (
            "agent-secret"
        )
    elif args.data is not None:
        raise InputError("token: --data belongs to --config, not to --secret-file")
    if not path.exists():
        # Never made here: a token from a secret that the server does not hold proves nothing.
        raise InputError(
            f"{path}: no agent secret (the server makes it at its first start with "
            "--quic-listen; or give --secret-file)"
        )
    print(agent_token(load_secret(path), name))
    return EXIT_OK


def _lab(args: argparse.Namespace) -> int:
    from pingmesh.lab.console import run_lab

    return run_lab(args, announce=_announce)
