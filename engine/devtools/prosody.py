"""A private Prosody XMPP server on loopback, for tests and for developers.

Everything lives in one directory: the generated config, the data (accounts), the pid file, the
log, and in TLS mode a self-signed CA and a server certificate made for the domain. Prosody runs
in the foreground as a child process and is stopped with SIGTERM (then SIGKILL).

    with start_prosody(tmp, users={"engine": "secret"}) as server:
        client.connect(server.host, server.port)   # as server.jid("engine")

This is a tool, so the core is synchronous (``subprocess``). From trio use
``async with open_prosody(...) as server`` and run the blocking calls in a thread, e.g.
``await trio.to_thread.run_sync(server.restart)``.

``wfe xmpp-dev-server`` is :func:`main`: one server in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wfe.engine.errors import EngineError

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_STANZA_SIZE_LIMIT",
    "INSTALL_HINT",
    "ProsodyError",
    "ProsodyNotInstalled",
    "ProsodyServer",
    "main",
    "open_prosody",
    "start_prosody",
]

DEFAULT_DOMAIN = "wfe.localhost"
DEFAULT_STANZA_SIZE_LIMIT = 256 * 1024  # Prosody 0.12's own default for c2s
#: Largest file the upload component (XEP-0363, ``mod_http_file_share``) takes: agents upload
#: output in pieces of a few MiB, so this leaves room.
DEFAULT_UPLOAD_SIZE_LIMIT = 16 * 1024 * 1024
#: Bytes one account may upload per day: output of any size must pass.
UPLOAD_DAILY_QUOTA = 1 << 40
#: Seconds an uploaded file is kept (Prosody prunes once a day); the engine fetches it at once.
UPLOAD_EXPIRES_AFTER = 86400
#: Prosody's ``network_settings``. By default, after each 8 KiB read of a connection with more
#: data waiting, Prosody resumes reading only on its next loop turn, at least ``min_wait``
#: (1 ms) later: big stanzas and HTTP uploads then arrive at 3-8 MB/s. A shorter wait lifts
#: that (a 4 MiB upload took 1.2-1.5 s as shipped, 0.15-0.25 s with this).
NETWORK_SETTINGS = "min_wait = 0.00001"
INSTALL_HINT = "prosody is not installed: apt-get install prosody"
LOOPBACK = "127.0.0.1"

_POLL = 0.05  # seconds between readiness checks while Prosody starts
_MODULES = ("roster", "saslauth", "disco", "ping", "posix")  # plus "tls" in TLS mode
_PORT_FAILED = "Failed to open server port"
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)
_USER_RE = re.compile(r"^[^\s@/\"&'<>:]{1,1023}$")


class ProsodyError(EngineError, RuntimeError):
    """Prosody could not be configured, started, stopped or asked to register an account."""


class ProsodyNotInstalled(ProsodyError, FileNotFoundError):
    """The ``prosody`` or ``prosodyctl`` executable is not on PATH."""


class ProsodyServer:
    """A Prosody run from ``directory``, listening only on 127.0.0.1:``port``.

    Nothing happens until :meth:`start` (or use :func:`start_prosody`). ``port=0`` picks a free
    loopback port now, so ``port`` is known before the start and stays the same across
    :meth:`restart`. ``tls=True`` requires STARTTLS with a certificate signed by the CA at
    ``ca_path``; otherwise plaintext and PLAIN authentication are allowed (loopback only).
    ``users`` are registered before the first start. With ``upload`` (the default) it also
    runs an XEP-0363 upload component, ``upload.<domain>`` (``mod_http_file_share``), serving
    HTTP (HTTPS in TLS mode, same certificate) on 127.0.0.1:``http_port``; agents put large
    incompressible output there. ``network_settings`` (Lua table contents, "" for Prosody's
    defaults) tunes Prosody's network loop; see ``NETWORK_SETTINGS``. Raises :class:`ValueError` for a bad domain,
    user name or limit, and :class:`ProsodyNotInstalled` when Prosody is missing.
    """

    host = LOOPBACK

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        port: int = 0,
        domain: str = DEFAULT_DOMAIN,
        tls: bool = False,
        users: Mapping[str, str] | None = None,
        stanza_size_limit: int = DEFAULT_STANZA_SIZE_LIMIT,
        upload: bool = True,
        upload_size_limit: int = DEFAULT_UPLOAD_SIZE_LIMIT,
        http_port: int = 0,
        network_settings: str = NETWORK_SETTINGS,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if not _DOMAIN_RE.match(domain):
            raise ValueError(
                f"bad XMPP domain {domain!r}: use lower-case DNS labels such as {DEFAULT_DOMAIN}"
            )
        if stanza_size_limit < 1024:
            raise ValueError(
                f"stanza_size_limit must be at least 1024 bytes, got {stanza_size_limit}"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self._prosody = _executable("prosody")
        self._prosodyctl = _executable("prosodyctl")
        self.directory = Path(directory).resolve()
        self.domain = domain
        self.tls = tls
        self.stanza_size_limit = stanza_size_limit
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = port or _free_loopback_port()
        self.upload = upload
        self.network_settings = network_settings
        self.upload_size_limit = upload_size_limit
        self.http_port = (http_port or _free_loopback_port()) if upload else None
        self.config_path = self.directory / "prosody.cfg.lua"
        self.log_path = self.directory / "prosody.log"
        self.output_path = self.directory / "prosody.out"
        self.data_path = self.directory / "data"
        self.ca_path: Path | None = self.directory / "certs" / "ca.pem" if tls else None
        self.users: dict[str, str] = {}
        self._pending_users = dict(users or {})
        for user in self._pending_users:
            _check_user(user)
        self._prepared = False
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ProsodyServer {self.domain} on {self.host}:{self.port} tls={self.tls} {state}>"

    # --- what clients need ----------------------------------------------------------------

    @property
    def upload_jid(self) -> str | None:
        """The JID of the upload component, or None without one."""
        return f"upload.{self.domain}" if self.upload else None

    @property
    def http_url(self) -> str | None:
        """The base URL of the upload component's HTTP service, or None without one."""
        if self.http_port is None:
            return None
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}/"

    def jid(self, user: str) -> str:
        """The bare JID of ``user`` on this server's domain."""
        _check_user(user)
        return f"{user}@{self.domain}"

    @property
    def running(self) -> bool:
        """True while the Prosody child process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the running Prosody, else None."""
        return self._process.pid if self.running and self._process else None

    # --- lifecycle ----------------------------------------------------------------------------

    def register(self, user: str, password: str) -> str:
        """Create (or reset the password of) ``user``; return its bare JID.

        Works whether or not the server is running (accounts are files under ``data/``).
        Raises :class:`ProsodyError` if ``prosodyctl`` refuses.
        """
        _check_user(user)
        if not password:
            raise ValueError(f"account {user!r}: the password must not be empty")
        self._prepare()
        result = subprocess.run(
            [
                self._prosodyctl,
                "--config",
                str(self.config_path),
                "register",
                user,
                self.domain,
                password,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
            reason = detail[-1] if detail else f"exit status {result.returncode}"
            raise ProsodyError(f"prosodyctl register {user}@{self.domain} failed: {reason}")
        self.users[user] = password
        return self.jid(user)

    def start(self) -> None:
        """Start Prosody and return once its port accepts TCP.

        Raises :class:`ProsodyError` (with the tail of Prosody's log) if it exits, cannot bind
        the port, or does not listen within ``start_timeout`` seconds; the child is then stopped.
        """
        if self.running:
            raise ProsodyError(f"prosody for {self.domain} is already running on port {self.port}")
        self._prepare()
        for user in list(self._pending_users):
            self.register(user, self._pending_users.pop(user))
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.output_path, "ab") as output:
            self._process = subprocess.Popen(
                [self._prosody, "-F", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # a Ctrl-C reaches only us, and we stop Prosody cleanly
            )
        atexit.register(self._kill_at_exit)
        try:
            self._wait_until_listening(log_offset)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Prosody: SIGTERM, then SIGKILL after ``stop_timeout`` seconds. Idempotent."""
        process, self._process = self._process, None
        atexit.unregister(self._kill_at_exit)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except BaseException:  # a second Ctrl-C: don't leave Prosody behind
            process.kill()
            process.wait()
            raise

    def restart(self) -> None:
        """Stop and start again on the same port with the same data (accounts, offline messages)."""
        self.stop()
        self.start()

    def wait(self) -> int:
        """Block until Prosody exits by itself; return its exit status."""
        if self._process is None:
            raise ProsodyError(f"prosody for {self.domain} is not running")
        return self._process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of Prosody's log and of its stdout/stderr."""
        tail: list[str] = []
        for path in (self.log_path, self.output_path):
            try:
                text = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            tail.extend(f"  {path.name}: {line}" for line in text[-lines:])
        return "\n".join(tail) if tail else "  (prosody wrote no log)"

    def __enter__(self) -> ProsodyServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Write the directory, the certificates (TLS) and the config, once."""
        if self._prepared:
            return
        (self.directory / "certs").mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(parents=True, exist_ok=True)
        ssl: tuple[Path, Path] | None = None
        if self.tls:
            ssl = _write_certificates(self.directory / "certs", self.domain)
        self.config_path.write_text(self._config(ssl))
        self._prepared = True

    def _config(self, ssl: tuple[Path, Path] | None) -> str:
        d = self.directory
        modules = ", ".join(_lua(m) for m in _MODULES + (("tls",) if ssl else ()))
        lines = [
            "-- Generated by engine/prosody.py for a private loopback server; rewritten on use.",
            "run_as_root = true",
            f"pidfile = {_lua(d / 'prosody.pid')}",
            f"data_path = {_lua(self.data_path)}",
            f"certificates = {_lua(d / 'certs')}",
            f'log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = {_lua(self.log_path)} }} }}',
            f"interfaces = {{ {_lua(self.host)} }}",
            f"c2s_ports = {{ {self.port} }}",
            "c2s_direct_tls_ports = { }",
            "legacy_ssl_ports = { }",
            "s2s_ports = { }",
            *self._http_ports(ssl),
            f"modules_enabled = {{ {modules} }}",
            'modules_disabled = { "s2s" }',
            f"c2s_stanza_size_limit = {self.stanza_size_limit}",
        ]
        if self.network_settings:
            if "\n" in self.network_settings:
                raise ValueError("network_settings must be one line of Lua table contents")
            lines.append(f"network_settings = {{ {self.network_settings} }}")
        if ssl is None:
            lines += [
                "c2s_require_encryption = false",
                "allow_unencrypted_plain_auth = true",
                'authentication = "internal_plain"',
                f"VirtualHost {_lua(self.domain)}",
            ]
        else:
            key, certificate = ssl
            lines += [
                "c2s_require_encryption = true",
                "allow_unencrypted_plain_auth = false",
                'authentication = "internal_hashed"',
                f"VirtualHost {_lua(self.domain)}",
                f"    ssl = {{ key = {_lua(key)}, certificate = {_lua(certificate)} }}",
            ]
        if self.upload:
            lines += [
                f'Component {_lua(self.upload_jid)} "http_file_share"',
                f"    http_file_share_size_limit = {self.upload_size_limit}",
                f"    http_file_share_daily_quota = {UPLOAD_DAILY_QUOTA}",
                f"    http_file_share_expires_after = {UPLOAD_EXPIRES_AFTER}",
                f"    http_host = {_lua(self.host)}",
                f"    http_external_url = {_lua(self.http_url)}",
            ]
        return "\n".join(lines) + "\n"

    def _http_ports(self, ssl: tuple[Path, Path] | None) -> list[str]:
        """HTTP(S) on loopback for the upload component; no port at all without it."""
        if self.http_port is None:
            return ["http_ports = { }", "https_ports = { }"]
        if ssl is None:
            return [
                f"http_ports = {{ {self.http_port} }}",
                f"http_interfaces = {{ {_lua(self.host)} }}",
                "https_ports = { }",
            ]
        key, certificate = ssl
        return [
            "http_ports = { }",
            f"https_ports = {{ {self.http_port} }}",
            f"https_interfaces = {{ {_lua(self.host)} }}",
            f"https_ssl = {{ key = {_lua(key)}, certificate = {_lua(certificate)} }}",
        ]

    def _wait_until_listening(self, log_offset: int) -> None:
        """Poll until Prosody logs that c2s is up on our port and the port accepts TCP.

        Both, because a port picked by ``port=0`` can be taken by someone else before Prosody
        binds it, and a connection would then reach the wrong server.
        """
        assert self._process is not None
        activated = f"Activated service 'c2s' on [{self.host}]:{self.port}"
        for _ in range(max(1, round(self.start_timeout / _POLL))):
            try:
                status = self._process.wait(timeout=_POLL)
            except subprocess.TimeoutExpired:
                pass
            else:
                raise ProsodyError(
                    f"prosody exited with status {status} while starting on {self.host}:{self.port}\n"
                    + self.log_tail()
                )
            log = _read(self.log_path)[log_offset:].decode(errors="replace")
            if _PORT_FAILED in log:
                raise ProsodyError(
                    f"prosody could not listen on {self.host}:{self.port}: is another server using it?\n"
                    + self.log_tail()
                )
            if activated not in log:
                continue
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                continue
        raise ProsodyError(
            f"prosody did not listen on {self.host}:{self.port} within {self.start_timeout:g} s\n"
            + self.log_tail()
        )

    def _kill_at_exit(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()


def start_prosody(
    directory: str | os.PathLike[str],
    *,
    port: int = 0,
    domain: str = DEFAULT_DOMAIN,
    tls: bool = False,
    users: Mapping[str, str] | None = None,
    stanza_size_limit: int = DEFAULT_STANZA_SIZE_LIMIT,
) -> ProsodyServer:
    """Configure, register ``users``, start, and return the running server.

    Use the result as a context manager (or call ``stop()``) to stop it. Raises
    :class:`ProsodyNotInstalled`, :class:`ProsodyError` or :class:`ValueError`.
    """
    server = ProsodyServer(
        directory,
        port=port,
        domain=domain,
        tls=tls,
        users=users,
        stanza_size_limit=stanza_size_limit,
    )
    server.start()
    return server


@asynccontextmanager
async def open_prosody(
    directory: str | os.PathLike[str], **options: Any
) -> AsyncIterator[ProsodyServer]:
    """``async with open_prosody(dir, ...) as server``: the trio face of :func:`start_prosody`.

    Start and stop run in a worker thread so the trio loop keeps running; the stop is shielded
    from cancellation. Options are those of :class:`ProsodyServer`.
    """
    server = ProsodyServer(directory, **options)
    await trio.to_thread.run_sync(server.start)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)


# --- wfe xmpp-dev-server ---------------------------------------------------------------------


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


# --- helpers ----------------------------------------------------------------------------------


def _executable(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ProsodyNotInstalled(INSTALL_HINT)
    return found


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _check_user(user: str) -> None:
    if not _USER_RE.match(user):
        raise ValueError(f"bad account name {user!r}: no spaces, '@', '/', ':' or quotes")


def _lua(value: object) -> str:
    """A Lua string literal for ``value`` (paths, domains)."""
    text = str(value)
    if any(ord(c) < 32 for c in text):
        raise ValueError(f"control character in config value {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _write_certificates(directory: Path, domain: str) -> tuple[Path, Path]:
    """Write ``ca.pem`` and a server key and certificate for ``domain``; return (key, cert).

    Files already there from an earlier run are kept, so clients can keep trusting the CA.
    """
    cert_path, key_path = directory / f"{domain}.crt", directory / f"{domain}.key"
    if all(path.exists() for path in (directory / "ca.pem", cert_path, key_path)):
        return key_path, cert_path
    now = datetime.datetime.now(datetime.UTC)  # wall-clock
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wfe test CA for {domain}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(domain)]
    names.append(x509.IPAddress(ipaddress.ip_address(LOOPBACK)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem))
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return key_path, cert_path
