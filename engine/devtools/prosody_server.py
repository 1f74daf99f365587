"""A private Prosody XMPP server on loopback, running: accounts, start, stop, restart.

Everything lives in one directory: the generated config (``prosody_config``), the data
(accounts), the pid file, the log, and in TLS mode a self-signed CA and a server certificate
made for the domain. Prosody runs in the foreground as a child process and is stopped with
SIGTERM (then SIGKILL). Import it as ``wfe.engine.devtools.prosody``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from wfe.engine.devtools.prosody_config import (
    DEFAULT_DOMAIN,
    DEFAULT_STANZA_SIZE_LIMIT,
    DEFAULT_UPLOAD_SIZE_LIMIT,
    LOOPBACK,
    NETWORK_SETTINGS,
    check_domain,
    check_user,
    config_text,
    write_certificates,
)
from wfe.engine.errors import EngineError

INSTALL_HINT = "prosody is not installed: apt-get install prosody"

_POLL = 0.05  # seconds between readiness checks while Prosody starts
_PORT_FAILED = "Failed to open server port"


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
        check_domain(domain)
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
            check_user(user)
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
        check_user(user)
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
        check_user(user)
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

    def register_many(self, users: Mapping[str, str], *, workers: int = 4) -> None:
        """Register every ``users`` name with its password, ``workers`` ``prosodyctl`` at a
        time (each is a process of ~40 ms: a thousand accounts one by one take 45 s).
        Raises the first :class:`ProsodyError` or :class:`ValueError`."""
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in pool.map(lambda item: self.register(*item), users.items()):
                pass

    def start(self) -> None:
        """Start Prosody and return once its port accepts TCP.

        Raises :class:`ProsodyError` (with the tail of Prosody's log) if it exits, cannot bind
        the port, or does not listen within ``start_timeout`` seconds; the child is then stopped.
        """
        if self.running:
            raise ProsodyError(f"prosody for {self.domain} is already running on port {self.port}")
        self._prepare()
        pending, self._pending_users = self._pending_users, {}
        self.register_many(pending)
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
            ssl = write_certificates(self.directory / "certs", self.domain)
        self.config_path.write_text(self._config(ssl))
        self._prepared = True

    def _config(self, ssl: tuple[Path, Path] | None) -> str:
        return config_text(
            directory=self.directory,
            data_path=self.data_path,
            log_path=self.log_path,
            host=self.host,
            port=self.port,
            domain=self.domain,
            stanza_size_limit=self.stanza_size_limit,
            network_settings=self.network_settings,
            http_port=self.http_port,
            upload_size_limit=self.upload_size_limit,
            ssl=ssl,
        )

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


# --- helpers ---------------------------------------------------------------------------------


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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
