"""``wfe.toml``: the engine's one configuration file, with a working default for every setting.

Paths in the file are relative to the directory that holds it. ``load_config`` refuses a
malformed file, an unknown key or a value of the wrong type with one line naming it, e.g.
``wfe.toml: agents.slots: expected an integer``.
"""

from __future__ import annotations

import enum
import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs

from wfe.engine.errors import ConfigError
from wfe.protocols.broadcasts import topic_problem
from wfe.protocols.codec import explain, strict_hooks
from wfe.protocols.xmpp import MIN_MAX_STANZA, is_bare_jid, is_loopback

CONFIG_NAME = "wfe.toml"


@attrs.frozen(kw_only=True)
class EngineSection:
    repository: str = "wfe.db"
    actions: tuple[str, ...] = ()  # extra action folders, searched before the shipped ones
    rscripts: tuple[str, ...] = ()  # extra RScript folders; a script there overrides a shipped one
    blocking_threshold: float = 0.25  # seconds a tasklet may hold the loop before it is reported
    private_key: str = "engine.key"  # Ed25519 key that signs every dispatched RScript
    public_key: str = "engine.pub"


@attrs.frozen(kw_only=True)
class ApiSection:
    host: str = "127.0.0.1"
    port: int = 8765
    token_file: str = "token"
    max_message: int = 1024 * 1024
    max_connections: int = 1000  # sockets on the console port, authenticated or not
    max_unauthenticated: int = 64  # of them, not yet authenticated
    admin_reserve: int = 8  # kept for admin tokens
    auth_timeout: float = 5.0  # seconds from connecting to a good auth


@attrs.frozen(kw_only=True)
class AgentsSection:
    local: int = 2  # local agents the engine starts itself (0: none)
    slots: int = 2  # slots of each local agent
    heartbeat: float = 2.0  # seconds between an agent's status reports
    heartbeat_deadline: float = 10.0  # silence after which an agent is declared lost
    max_redispatch: int = 3  # times a job is re-dispatched after losing its agent
    reconcile_grace: float = 10.0  # after a restart, how long to wait for agents to report back
    lease: float = 60.0  # how long an agent's attempts run on without word from the engine
    restart_backoff: float = 1.0  # first delay before a dead local agent is started again
    # ``[agents.<name>]`` tables: groups of local agents started and stopped together; ``local``
    # above is the shorthand for a group named "local" (agents local-1 ... local-N)
    groups: dict[str, AgentGroup] = attrs.field(factory=dict, eq=False)

    def all_groups(self) -> dict[str, AgentGroup]:
        """Every group of local agents: ``local = N`` (if N > 0) first, then the tables."""
        shorthand = {"local": AgentGroup(count=self.local)} if self.local else {}
        return {**shorthand, **self.groups}


@attrs.frozen(kw_only=True)
class AgentGroup:
    """``[agents.<name>]``: local agents the engine starts and stops together
    (``wfe agents up|down NAME``); its agents are named ``<name>-1`` ... ``<name>-<count>``."""

    enabled: bool = True  # started with the engine (else only by `wfe agents up NAME`)
    count: int = 1  # agents in the group
    slots: int = 0  # slots of each agent (0: [agents] slots)
    tags: tuple[str, ...] = ()  # tags each agent offers
    site: str = "local"  # the site each agent declares
    transport: str = "local"  # how they reach the engine: only "local" agents are started here
    namespace: str = ""  # the namespace whose broadcasts its agents hear (with reactors)
    # topic -> script each agent runs on a broadcast of the topic (relative: to the root)
    reactors: dict[str, str] = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class FairShareSection:
    """``[fair_share]``: how free slots are shared between namespaces and users with work
    queued (wfe.engine.dispatch.fairshare)."""

    window: float = 600.0  # seconds over which past usage counts (the moving average's time)
    namespaces: dict[str, float] = attrs.field(factory=dict, eq=False)  # weights; 1 if not named
    users: dict[str, float] = attrs.field(factory=dict, eq=False)  # weights; 1 if not named


@attrs.frozen(kw_only=True)
class SitesSection:
    """``[sites]``: how far each site is from each storage element (wfe.engine.dispatch.locality)."""

    # site -> storage element -> distance, 0 (local) to 100 (far); a storage element a site
    # does not list is far (100)
    distances: dict[str, dict[str, int]] = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class RequestTypesSection:
    """``[request_types]``: the kinds of request a definition names in ``[workflow] type``."""

    # type -> the priority of a request of that type whose submitter gives none
    priority: dict[str, int] = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class JobsSection:
    timeout: float = 3600.0  # per attempt
    overall_timeout: float = 0.0  # 0: none
    wait_agent_timeout: float = 0.0  # 0: wait for an agent forever
    retries: int = 0
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    priority: int = 0


@attrs.frozen(kw_only=True)
class XmppSection:
    """``[xmpp]``: the engine's XMPP account, for agents on other hosts (docs/xmpp.md)."""

    enabled: bool = False
    jid: str = ""  # the engine's bare JID, e.g. engine@wfe.example.org
    password_file: str = "xmpp.password"  # holds the password (mode 0600)
    host: str = ""  # server to connect to; "" = the JID's domain
    port: int = 5222
    tls: str = "starttls"  # "starttls" (certificate verified) or "plain" (loopback only)
    ca_file: str = ""  # PEM CA bundle for a private CA; "" = the system's CAs
    agents: tuple[str, ...] = ()  # agent JIDs accepted; empty = any JID on the engine's domain
    max_stanza: int = 256 * 1024  # the server's stanza size limit (Prosody's default)


@attrs.frozen(kw_only=True)
class RetentionSection:
    """``[retention]``: how long finished jobs keep their output and events (wfe.engine.repository.retention)."""

    keep_days: float = 0.0  # purge what ended longer ago than this; 0: keep everything
    interval: float = 3600.0  # seconds between the engine's purges (when keep_days > 0)


class ApprovalMode(enum.Enum):
    """Who approves a submitted request, as ``[approval]`` says for its namespace."""

    DEFINITION = "definition"  # the definition's [policy] approval decides
    OPERATOR = "operator"  # a person approves every request, whatever the definition says
    AUTO = "auto"  # the engine approves at once, whatever the definition says


@attrs.frozen(kw_only=True)
class ApprovalSection:
    """``[approval]``: who approves submitted requests, by namespace (docs/definitions.md).

    ``namespaces`` holds ``(pattern, mode)`` in file order; a pattern is a namespace or a
    glob with ``*`` and ``?`` (``survey.*``).
    """

    default: ApprovalMode = ApprovalMode.DEFINITION
    namespaces: tuple[tuple[str, ApprovalMode], ...] = ()

    def rule_for(self, namespace: str) -> tuple[ApprovalMode, str]:
        """The mode for ``namespace`` and the key that sets it: the entry naming it exactly,
        else the matching pattern with the most characters that are not wildcards (the first
        in the file on a tie), else ``default``."""
        best: tuple[int, str, ApprovalMode] | None = None
        for pattern, mode in self.namespaces:
            if pattern == namespace:
                return mode, _approval_key(pattern)
            if fnmatch.fnmatchcase(namespace, pattern):
                literal = len(pattern) - pattern.count("*") - pattern.count("?")
                if best is None or literal > best[0]:
                    best = (literal, pattern, mode)
        if best is not None:
            return best[2], _approval_key(best[1])
        return self.default, "approval.default"


def _approval_key(pattern: str) -> str:
    return f'approval.namespaces."{pattern}"'


@attrs.frozen(kw_only=True)
class RepositorySection:
    """``[repository]``: limits of the SQLite repository (engine/repository)."""

    wal_max_mb: int = 64  # the WAL file is checkpointed and truncated before it passes this


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes in ``"50G"``, ``"512M"``, ``"1.5T"`` or ``"4096"`` (K, M, G, T: powers of 1024).
    Raises ``ValueError``."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f'expected a size like "50G" or "512M", not {text!r}')
    return int(float(found.group(1)) * _SIZE_UNITS[found.group(2).upper()])


@attrs.frozen(kw_only=True)
class StorageSection:
    """``[storage]``: disk pressure on product files (wfe.engine.requests.purge)."""

    quota: str = ""  # e.g. "50G": the product files the engine keeps; "" = no quota
    purge_at: float = 0.9  # purge intermediate products above this fraction of the quota

    @property
    def quota_bytes(self) -> int | None:
        """The quota in bytes, or None without one."""
        return parse_size(self.quota) if self.quota.strip() else None


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration; ``root`` is the directory of ``wfe.toml``."""

    root: Path
    engine: EngineSection = EngineSection()
    api: ApiSection = ApiSection()
    agents: AgentsSection = AgentsSection()
    jobs: JobsSection = JobsSection()
    fair_share: FairShareSection = FairShareSection()
    sites: SitesSection = SitesSection()
    request_types: RequestTypesSection = RequestTypesSection()
    xmpp: XmppSection = XmppSection()
    approval: ApprovalSection = ApprovalSection()
    retention: RetentionSection = RetentionSection()
    repository: RepositorySection = RepositorySection()
    storage: StorageSection = StorageSection()

    def path(self, relative: str) -> Path:
        """Resolve a path from the file against the configuration's directory."""
        return (self.root / relative).resolve()

    @property
    def repository_path(self) -> Path:
        return self.path(self.engine.repository)

    @property
    def run_dir(self) -> Path:
        """Sockets and pid files."""
        return self.root / "run"

    @property
    def agents_dir(self) -> Path:
        """Spools and work directories of the local agents."""
        return self.root / "agents"


_converter = strict_hooks(cattrs.Converter(forbid_extra_keys=True))


def parse_config(text: str, *, root: Path, source: str = CONFIG_NAME) -> Config:
    """Build a ``Config`` from TOML text. Raises ``ConfigError`` with one line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    approval = _parse_approval(data.pop("approval", {}), source)
    groups = _parse_groups(data.get("agents"), source, root)
    if groups:  # the tables of [agents] are groups; the rest is the section's keys
        data["agents"] = {k: v for k, v in data["agents"].items() if k not in groups}
    try:
        sections = {k: v for k, v in data.items()}
        config = _converter.structure({"root": str(root), **sections}, _RawConfig)
    except cattrs.BaseValidationError as exc:
        messages = cattrs.transform_error(exc, path="", format_exception=explain)
        detail = messages[0] if messages else str(exc)
        raise ConfigError(f"{source}: {_tidy(detail)}") from None
    result = Config(
        root=root,
        engine=config.engine,
        api=config.api,
        agents=attrs.evolve(config.agents, groups=groups),
        jobs=config.jobs,
        fair_share=config.fair_share,
        sites=config.sites,
        request_types=config.request_types,
        xmpp=config.xmpp,
        approval=approval,
        retention=config.retention,
        repository=config.repository,
        storage=config.storage,
    )
    _check_values(result, source)
    return result


@attrs.frozen(kw_only=True)
class _RawConfig:
    root: str
    engine: EngineSection = EngineSection()
    api: ApiSection = ApiSection()
    agents: AgentsSection = AgentsSection()
    jobs: JobsSection = JobsSection()
    fair_share: FairShareSection = FairShareSection()
    sites: SitesSection = SitesSection()
    request_types: RequestTypesSection = RequestTypesSection()
    xmpp: XmppSection = XmppSection()
    retention: RetentionSection = RetentionSection()
    repository: RepositorySection = RepositorySection()
    storage: StorageSection = StorageSection()


_NAMESPACE_PATTERN_CHARS = frozenset("_.-*?")
_GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _parse_groups(raw: Any, source: str, root: Path) -> dict[str, AgentGroup]:
    """The ``[agents.<name>]`` tables, each checked; one line naming the key on an error."""
    if not isinstance(raw, dict):
        return {}
    groups: dict[str, AgentGroup] = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            continue
        key = f"agents.{name}"
        if not _GROUP_NAME.fullmatch(name):
            raise ConfigError(
                f"{source}: {key}: a group name has lower-case letters, digits, '_' and '-'"
                " (at most 32)"
            )
        try:
            group = _converter.structure(table, AgentGroup)
        except cattrs.BaseValidationError as exc:
            messages = cattrs.transform_error(exc, path="", format_exception=explain)
            detail = _tidy(messages[0] if messages else str(exc))
            where, _, what = detail.partition(": ")
            where = key if where == "top level" else f"{key}.{where}"
            raise ConfigError(f"{source}: {where}: {what}") from None
        problems = [
            (group.count >= 0, f"{key}.count must be 0 or more"),
            (group.slots >= 0, f"{key}.slots must be 0 (the [agents] slots) or more"),
            (bool(group.site), f"{key}.site must not be empty"),
            (all(group.tags), f"{key}.tags: a tag must not be empty"),
            (
                group.transport == "local",
                f'{key}.transport: only "local" groups are started by the engine'
                " (XMPP agents start on their own hosts: docs/xmpp.md)",
            ),
        ]
        for topic, script in group.reactors.items():
            problems.append((not topic_problem(topic), f"{key}.reactors: {topic_problem(topic)}"))
            path = root / script
            problems.append((path.is_file(), f"{key}.reactors.{topic}: {path} is not a file"))
        for ok, message in problems:
            if not ok:
                raise ConfigError(f"{source}: {message}")
        groups[name] = group
    return groups


def _parse_approval(raw: Any, source: str) -> ApprovalSection:
    """``[approval]`` by hand, so that each error names its key (a pattern is a key)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: approval: expected a table")
    unknown = sorted(set(raw) - {"default", "namespaces"})
    if unknown:
        raise ConfigError(f"{source}: approval: unknown key(s) ({', '.join(unknown)})")
    default = _approval_mode(raw.get("default", "definition"), "approval.default", source)
    namespaces = raw.get("namespaces", {})
    if not isinstance(namespaces, dict):
        raise ConfigError(
            f'{source}: approval.namespaces: expected a table like namespaces."survey.*" = "operator"'
        )
    rules = []
    for pattern, value in namespaces.items():
        key = _approval_key(pattern)
        if not pattern or not all(c.isalnum() or c in _NAMESPACE_PATTERN_CHARS for c in pattern):
            raise ConfigError(
                f"{source}: {key}: a namespace or pattern has letters, digits, '_', '.', '-'"
                " and the wildcards '*' and '?'"
            )
        rules.append((pattern, _approval_mode(value, key, source)))
    return ApprovalSection(default=default, namespaces=tuple(rules))


def _approval_mode(value: Any, key: str, source: str) -> ApprovalMode:
    if isinstance(value, str) and value in ApprovalMode._value2member_map_:
        return ApprovalMode(value)
    modes = ", ".join(f'"{m.value}"' for m in ApprovalMode)
    raise ConfigError(f"{source}: {key}: expected one of {modes}, not {value!r}")


def _tidy(detail: str) -> str:
    # cattrs says "expected an integer @ .agents.slots"; we say the path first.
    if " @ " in detail:
        what, path = detail.rsplit(" @ ", 1)
        what = what.replace("expected an object", "expected a table")
        what = what.replace("expected dict", "expected a table")
        path = re.sub(r"\['([^']*)'\]", r".\1", path)  # .users['alice'] -> .users.alice
        if what.startswith("unknown field(s) "):
            what = f"unknown key(s) ({what.removeprefix('unknown field(s) ')})"
        return f"{path.lstrip('.') or 'top level'}: {what}"
    return detail


def _size_ok(text: str) -> bool:
    try:
        return not text.strip() or parse_size(text) > 0
    except ValueError:
        return False


def _check_values(config: Config, source: str) -> None:
    checks = [
        (config.agents.local >= 0, "agents.local must be 0 or more"),
        (config.agents.slots >= 1, "agents.slots must be at least 1"),
        (config.agents.heartbeat > 0, "agents.heartbeat must be positive"),
        (
            config.agents.heartbeat_deadline > config.agents.heartbeat,
            "agents.heartbeat_deadline must be longer than agents.heartbeat",
        ),
        (config.agents.max_redispatch >= 0, "agents.max_redispatch must be 0 or more"),
        (config.agents.reconcile_grace >= 0, "agents.reconcile_grace must be 0 or more"),
        (
            config.agents.lease > 3 * config.agents.heartbeat,
            "agents.lease must be more than three heartbeats, or renewals would race it",
        ),
        (config.agents.restart_backoff > 0, "agents.restart_backoff must be positive"),
        (config.fair_share.window > 0, "fair_share.window must be positive"),
        *(
            (weight > 0, f"fair_share.{kind}.{name}: a weight must be positive, not {weight:g}")
            for kind, weights in (
                ("namespaces", config.fair_share.namespaces),
                ("users", config.fair_share.users),
            )
            for name, weight in weights.items()
        ),
        *(
            (
                0 <= d <= 100,
                f"sites.distances.{site}.{rse}: a distance is 0 (local) to 100 (far), not {d}",
            )
            for site, distances in config.sites.distances.items()
            for rse, d in distances.items()
        ),
        (0 <= config.api.port <= 65535, "api.port must be between 0 and 65535"),
        (
            config.retention.keep_days >= 0,
            "retention.keep_days must be 0 (keep everything) or more",
        ),
        (config.retention.interval > 0, "retention.interval must be positive"),
        (_size_ok(config.storage.quota), 'storage.quota: expected a size like "50G" or "512M"'),
        (
            0 < config.storage.purge_at <= 1,
            "storage.purge_at must be a fraction of the quota, more than 0 and at most 1",
        ),
        (config.repository.wal_max_mb >= 1, "repository.wal_max_mb must be at least 1"),
        (config.api.max_message >= 1024, "api.max_message must be at least 1024 bytes"),
        (config.api.max_unauthenticated >= 1, "api.max_unauthenticated must be at least 1"),
        (config.api.admin_reserve >= 0, "api.admin_reserve must be 0 or more"),
        (
            config.api.max_connections > config.api.max_unauthenticated + config.api.admin_reserve,
            "api.max_connections must be more than api.max_unauthenticated + api.admin_reserve",
        ),
        (
            config.api.auth_timeout > 0,
            "api.auth_timeout must be positive",
        ),
        (config.engine.blocking_threshold > 0, "engine.blocking_threshold must be positive"),
        (config.jobs.timeout > 0, "jobs.timeout must be positive"),
        (config.jobs.retries >= 0, "jobs.retries must be 0 or more"),
        (config.jobs.backoff >= 0, "jobs.backoff must be 0 or more"),
        (config.jobs.overall_timeout >= 0, "jobs.overall_timeout must be 0 (none) or more"),
        (
            config.jobs.wait_agent_timeout >= 0,
            "jobs.wait_agent_timeout must be 0 (wait forever) or more",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    _check_xmpp(config.xmpp, source)


def _check_xmpp(x: XmppSection, source: str) -> None:
    """``[xmpp]`` values are checked even when it is off (a mistake should not wait until it
    is switched on); on, it must name a usable account, and plaintext only on loopback."""
    problems = [
        (0 < x.port <= 65535, "xmpp.port must be between 1 and 65535"),
        (x.tls in ("starttls", "plain"), f'xmpp.tls must be "starttls" or "plain", not {x.tls!r}'),
        (
            x.max_stanza >= MIN_MAX_STANZA,
            f"xmpp.max_stanza must be at least {MIN_MAX_STANZA} bytes",
        ),
        (
            not x.jid or is_bare_jid(x.jid),
            f"xmpp.jid must be a bare JID like engine@wfe.example.org, not {x.jid!r}",
        ),
    ]
    problems += [(is_bare_jid(a), f"xmpp.agents: {a!r} is not a bare JID") for a in x.agents]
    if x.enabled:
        problems += [
            (
                is_bare_jid(x.jid),
                f"xmpp.jid must be a bare JID like engine@wfe.example.org, not {x.jid!r}",
            ),
            (bool(x.password_file), "xmpp.password_file must name the file holding the password"),
        ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    host = x.host or x.jid.rpartition("@")[2]
    if x.enabled and x.tls == "plain" and not is_loopback(host):
        raise ConfigError(
            f'{source}: xmpp.tls = "plain" is allowed only with a loopback host, not {host!r}:'
            ' use tls = "starttls"'
        )


def load_config(path: Path) -> Config:
    """Read ``wfe.toml`` at ``path``. Raises ``ConfigError`` with one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create one with `wfe init DIR`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, root=path.parent.resolve(), source=str(path))


DEFAULT_TOML = """\
# wfe configuration. Every setting has a default that works on one machine;
# paths are relative to this file. See docs/configuration.md.

[engine]
repository = "wfe.db"
blocking_threshold = 0.25

[api]
host = "127.0.0.1"   # the console binds to loopback unless you change this
port = {port}
token_file = "token"

[agents]
local = {local}          # local agents started by the engine
slots = {slots}
heartbeat = 2.0
heartbeat_deadline = 10.0
lease = 60.0             # an agent cut off this long kills its scripts; lost work waits this long

[jobs]
timeout = 3600.0
retries = 0

[approval]
default = "definition"   # who approves requests: "definition" (its [policy]), "operator" or "auto"
# namespaces."survey.*" = "operator"   # per namespace (exact name or glob); the most specific wins
"""
