"""``python -m examples.chat [--host H] [--port P] [--broker URL] [--workers N]``.

Embedded defaults: the in-memory hub and RAM sessions, nothing else to run. With
``--broker redis://127.0.0.1:6379/0`` the hub and the sessions use that Redis, and
``--workers N`` runs N processes on the port whose users chat with each other. A Redis
broker needs redis-py: ``bash scripts/setup.sh redis`` installs it into this checkout's
``.venv`` (``scripts/run-chat.sh --broker ...`` does that by itself).
"""

from gevent import monkey

monkey.patch_all()  # before anything imports socket or ssl

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

TARGET = "examples.chat.app:application"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.chat", description="Run the rtserver chat example.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0: any free port)")
    parser.add_argument("--broker", metavar="URL", help="hub broker, e.g. redis://127.0.0.1:6379/0 (default: memory)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (N > 1 needs --broker)")
    return parser


def _have_redis() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return True


def _shown_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host and host != "::" else host


def main(argv: list[str] | None = None) -> int:
    """Run the chat through rtserver's command line, printing its URL once it listens."""
    args = _parser().parse_args(argv)
    if args.workers > 1 and args.port == 0:
        _parser().error("--workers needs a fixed --port")
    if args.broker and args.broker.startswith(REDIS_SCHEMES) and not _have_redis():
        _parser().error(
            "--broker with a Redis URL needs redis-py (the hub and the sessions use it): "
            "install it with `bash scripts/setup.sh redis` in this checkout, or run scripts/run-chat.sh"
        )
    # Worker processes import examples.chat.app: let them find it from anywhere.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    if root not in sys.path:
        sys.path.insert(0, root)

    import rtserver
    from rtserver import cli

    cli_args = ["run", TARGET, "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if args.broker:
        cli_args += ["--broker", args.broker]
    mode = f"hub: {args.broker or 'memory'}, {args.workers} worker{'s' if args.workers > 1 else ''}"

    if args.workers > 1:
        print(f"rtserver chat: http://{_shown_host(args.host)}:{args.port}/ ({mode})", flush=True)
    else:

        def announce() -> None:
            address = rtserver.server.bound_address
            port = address[1] if isinstance(address, tuple) else args.port
            print(f"rtserver chat: http://{_shown_host(args.host)}:{port}/ ({mode})", flush=True)

        rtserver.engine.subscribe("start", announce, priority=90)  # after the server listens
    return cli.main(cli_args)


if __name__ == "__main__":
    sys.exit(main())
