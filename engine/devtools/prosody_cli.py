"""``wfe xmpp-dev-server``: one private Prosody in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from wfe.engine.devtools.prosody_config import DEFAULT_DOMAIN
from wfe.engine.devtools.prosody_server import ProsodyError, ProsodyServer


def main(argv: Sequence[str] | None = None) -> int:
    """``wfe xmpp-dev-server``: run one Prosody in the foreground until Ctrl-C (or SIGTERM,
    SIGHUP), then stop it."""
    parser = argparse.ArgumentParser(
        prog="wfe xmpp-dev-server",
        description="Run a private Prosody on 127.0.0.1 for development. Stop it with Ctrl-C.",
    )
    parser.add_argument(
        "--dir", help="keep config, accounts and logs here (default: a temporary directory)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=5222,
        help="c2s port on 127.0.0.1, 0 for any free (default 5222)",
    )
    parser.add_argument(
        "--domain", default=DEFAULT_DOMAIN, help=f"XMPP domain (default {DEFAULT_DOMAIN})"
    )
    parser.add_argument(
        "--tls", action="store_true", help="require STARTTLS with a generated self-signed CA"
    )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="register an account (repeat for more)",
    )
    args = parser.parse_args(argv)
    users: dict[str, str] = {}
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep or not name or not password:
            parser.error(f"bad --user {spec!r}: expected NAME:PASSWORD")
        users[name] = password
    try:
        with _directory(args.dir) as directory:
            return _serve(directory, args.port, args.domain, args.tls, users)
    except (ProsodyError, ValueError) as exc:
        print(f"wfe xmpp-dev-server: error: {exc}", file=sys.stderr)
        return 1


def _serve(directory: Path, port: int, domain: str, tls: bool, users: dict[str, str]) -> int:
    server = ProsodyServer(directory, port=port, domain=domain, tls=tls, users=users)
    # Prosody runs in its own session: nothing but us stops it. So Ctrl-C must stop us even
    # when SIGINT came ignored from our parent (a command started with ``&`` by a
    # non-interactive shell inherits SIG_IGN, and Python then installs no handler), and so
    # must SIGTERM and SIGHUP (the terminal closed), which would end us without cleanup.
    previous = {
        signum: signal.signal(signum, handler)
        for signum, handler in (
            (signal.SIGINT, signal.default_int_handler),
            (signal.SIGTERM, _raise_keyboard_interrupt),
            (signal.SIGHUP, _raise_keyboard_interrupt),
        )
    }
    try:
        with server:
            print(f"prosody listening on {server.host}:{server.port}, domain {server.domain}")
            print(f"  directory {server.directory} (log: {server.log_path.name})")
            if server.ca_path is not None:
                print(f"  STARTTLS required; clients must trust the CA at {server.ca_path}")
            else:
                print("  plaintext c2s, PLAIN auth allowed (loopback only)")
            if server.upload_jid is not None:
                print(f"  upload service {server.upload_jid} (XEP-0363) at {server.http_url}")
            for user, password in server.users.items():
                print(f"  account {server.jid(user)} password {password}")
            print("Ctrl-C to stop", flush=True)
            status = server.wait()
            print(
                f"wfe xmpp-dev-server: error: prosody exited with status {status}\n{server.log_tail()}",
                file=sys.stderr,
            )
            return 1
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _directory(path: str | None) -> Iterator[Path]:
    if path is not None:
        yield Path(path)
        return
    temporary = tempfile.mkdtemp(prefix="wfe-prosody-")
    try:
        yield Path(temporary)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
