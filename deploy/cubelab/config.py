"""The platform config: one YAML file, validated against a schema, read into plain dataclasses.

Loading never touches the disk beyond reading the file, so a bad config changes nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from cubelab import storage

if TYPE_CHECKING:  # imported where a config is validated: the tracking environment names teams without it
    import jsonschema


class ConfigError(Exception):
    """A config that cannot be used. The message names the file, the key and, where known, the line."""


# Limits on the YAML itself, checked before and while it is read, so a hostile or broken file fails in
# milliseconds: a platform config is a few kilobytes.
MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ALIASES = 100
MAX_NODES = 100_000  # with aliases expanded
# Folders that are never a state directory: cubelab would change their mode and fill them.
SYSTEM_FOLDERS = frozenset(
    "/ /bin /boot /dev /etc /home /lib /lib64 /media /mnt /opt /proc /root /run /sbin /srv /sys /tmp /usr "
    "/usr/bin /usr/lib /usr/local /usr/share /var /var/lib /var/log /var/tmp /var/cache".split()
)


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False
    operator: bool = False


@dataclass(frozen=True)
class ClusterLimits:
    """What a team's members may ask of the Dask gateway; see platform.schema.json (dask_gateway.clusters)."""

    worker_cores_min: int = 1
    worker_cores_max: int = 2
    worker_cores: int = 1
    worker_memory_gib_min: float = 0.5
    worker_memory_gib_max: float = 4
    worker_memory_gib: float = 2
    max_workers_per_cluster: int = 4
    max_workers_per_user: int = 8
    max_clusters_per_user: int = 2
    idle_timeout_seconds: int = 1800

    def problem(self) -> str:
        """Why these limits contradict themselves, or ''."""
        for key in ("worker_cores", "worker_memory_gib"):
            low, value, high = getattr(self, f"{key}_min"), getattr(self, key), getattr(self, f"{key}_max")
            if not low <= value <= high:
                return f"{key} {value} is not between {key}_min {low} and {key}_max {high}"
        if self.max_workers_per_cluster > self.max_workers_per_user:
            return (f"max_workers_per_cluster {self.max_workers_per_cluster} is more than max_workers_per_user "
                    f"{self.max_workers_per_user}")  # fmt: skip
        return ""


@dataclass(frozen=True)
class DaskGateway:
    """dask-gateway for every team (cubelab.gateway); see platform.schema.json."""

    enabled: bool = False
    clusters: ClusterLimits = field(default_factory=ClusterLimits)


@dataclass(frozen=True)
class Team:
    name: str
    members: tuple[str, ...]
    admins: tuple[str, ...] = ()
    port: int | None = None
    gpu: bool = False
    dask: ClusterLimits = field(default_factory=ClusterLimits)

    @property
    def ident(self) -> str:
        """The team name as a SQL identifier part (hyphens are not allowed there)."""
        return self.name.replace("-", "_")

    @property
    def database(self) -> str:
        return f"mlflow_{self.ident}"

    @property
    def role(self) -> str:
        return f"team_{self.ident}"

    @property
    def service(self) -> str:
        return f"mlflow-{self.name}"


@dataclass(frozen=True)
class Ports:
    postgres: int = 15432
    s3: int = 18333
    tracking: int = 15100
    hub: int = 18000
    prometheus: int = 19090
    dask_gateway: int = 18100
    dask_dashboards: int = 18120
    # Below ip_unprivileged_port_start, where only root (or an account given CAP_NET_BIND_SERVICE) may bind:
    # dask-gateway's private API, HTTP proxy and TLS proxy, then Prometheus. Embedded stack as root only.
    inner: int = 908

    # How many consecutive ports each shared service takes from its base port.
    SPANS: ClassVar[dict[str, int]] = {"postgres": 1, "s3": storage.SPAN, "hub": 3, "prometheus": 1,
                                       "dask_gateway": 4, "dask_dashboards": 40,
                                       "inner": 4}  # fmt: skip

    @property
    def dask_gateway_tls(self) -> int:
        """The gateway's TLS port (schedulers, by SNI): the port after ports.dask_gateway."""
        return self.dask_gateway + 1

    @property
    def dask_gateway_api(self) -> int:
        """The gateway's private API (its proxy forwards there; schedulers send heartbeats there): two after."""
        return self.dask_gateway + 2

    @property
    def dask_gateway_proxy(self) -> int:
        """dask-gateway's own HTTP proxy, behind cubelab's login front on ports.dask_gateway: three after."""
        return self.dask_gateway + 3

    @property
    def dask_dashboard_range(self) -> range:
        """Loopback ports of clusters' dashboards (one per running scheduler), reachable by the gateway only."""
        return range(self.dask_dashboards, self.dask_dashboards + self.SPANS["dask_dashboards"])

    # SeaweedFS serves gRPC on each of its HTTP ports + 10000.
    GRPC_OFFSET: ClassVar[int] = storage.GRPC_OFFSET

    @property
    def hub_proxy_api(self) -> int:
        """The proxy's REST API (the hub configures routes there): the port after ports.hub."""
        return self.hub + 1

    @property
    def hub_api(self) -> int:
        """The hub itself (its REST API, straight, for services): two after ports.hub."""
        return self.hub + 2

    def reserved(self) -> dict[int, str]:
        """Ports the shared services take, with the config key that gives each (SeaweedFS's gRPC twins too)."""
        taken = {
            port: f"ports.{key}"
            for key, span in self.SPANS.items()
            for port in range(getattr(self, key), getattr(self, key) + span)
        }
        for port in range(self.s3, self.s3 + self.SPANS["s3"]):
            taken.setdefault(port + self.GRPC_OFFSET, "ports.s3 (SeaweedFS gRPC, port + 10000)")
        return taken


@dataclass(frozen=True)
class Supervision:
    """The embedded stack's supervisor (cubelab.backends.local.supervisor); see platform.schema.json."""

    enabled: bool = True
    max_restarts: int = 5
    window_seconds: int = 600
    max_pause_seconds: float = 30
    log_max_mb: float = 50
    log_keep: int = 3


@dataclass(frozen=True)
class Kernels:
    """The embedded stack's kernels; see platform.schema.json."""

    cuda: bool | str = "auto"


@dataclass(frozen=True)
class Monitoring:
    """Metrics and Prometheus (cubelab.monitoring); see platform.schema.json."""

    enabled: bool = False
    scrape_interval_seconds: int = 15
    retention_days: int = 15
    sizes_every_seconds: int = 60
    service_monitor: bool = False


@dataclass(frozen=True)
class HubAuth:
    type: str = "local"
    client_id: str = ""
    client_secret_file: str = ""
    authorize_url: str = ""
    token_url: str = ""
    userdata_url: str = ""
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    scope: tuple[str, ...] = ("openid", "profile", "groups")


@dataclass(frozen=True)
class Hub:
    auth: HubAuth = field(default_factory=HubAuth)
    cull_idle_seconds: int = 3600
    public_url: str = ""
    subdomains: bool = False
    spawn_timeout_seconds: int = 60


@dataclass(frozen=True)
class ExternalPostgres:
    host: str
    port: int = 5432
    user: str = "postgres"


@dataclass(frozen=True)
class ExternalS3:
    endpoint: str


@dataclass(frozen=True)
class Profile:
    """Resources of a user's pod on Kubernetes."""

    cpu_limit: float
    mem_limit: str
    gpus: int = 0


@dataclass(frozen=True)
class Containers:
    """Images of the container deployments (compose, Helm), and the external services they may use."""

    registry: str = "cubelab"
    tag: str = "latest"
    public_url: str = "http://localhost:8000"
    postgres: ExternalPostgres | None = None  # None: the bundled Postgres
    s3: ExternalS3 | None = None  # None: the bundled SeaweedFS
    cpu_profile: Profile = Profile(cpu_limit=4, mem_limit="16G")
    gpu_profile: Profile = Profile(cpu_limit=8, mem_limit="64G", gpus=1)

    def image(self, name: str) -> str:
        return f"{self.registry}/{name}:{self.tag}"


@dataclass(frozen=True)
class Storage:
    bucket_prefix: str = "cubelab-"
    artifact_prefix: str = "mlflow"


@dataclass(frozen=True)
class PlatformConfig:
    path: Path
    state_dir: Path
    users: tuple[User, ...]
    teams: tuple[Team, ...]
    storage: Storage = field(default_factory=Storage)
    ports: Ports = field(default_factory=Ports)
    supervision: Supervision = field(default_factory=Supervision)
    monitoring: Monitoring = field(default_factory=Monitoring)
    dask_gateway: DaskGateway = field(default_factory=DaskGateway)
    kernels: Kernels = field(default_factory=Kernels)
    hub: Hub = field(default_factory=Hub)
    containers: Containers = field(default_factory=Containers)

    @property
    def admins(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.users if u.admin)

    @property
    def operators(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.users if u.operator and not u.admin)

    @property
    def embedded_public_url(self) -> str:
        """Where browsers reach the embedded stack's hub. With subdomains the default host is localhost, since
        browsers resolve every *.localhost name to loopback (127.0.0.1 has no subdomains)."""
        if self.hub.public_url:
            return self.hub.public_url.rstrip("/")
        return f"http://{'localhost' if self.hub.subdomains else '127.0.0.1'}:{self.ports.hub}"

    def teams_of(self, user: str) -> tuple[Team, ...]:
        return tuple(t for t in self.teams if user in t.members)

    def bucket(self, team: Team) -> str:
        return f"{self.storage.bucket_prefix}{team.name}"

    def team(self, name: str) -> Team:
        for team in self.teams:
            if team.name == name:
                return team
        raise KeyError(name)


def schema() -> dict[str, Any]:
    text = resources.files("cubelab").joinpath("platform.schema.json").read_text()
    return json.loads(text)


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"line {line}: key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_depth(text: str) -> None:
    """Refuse deep nesting from the parser's event stream, which stops at the first level too deep (PyYAML's
    composer recurses, so a 100,000-deep file would otherwise take seconds to fail)."""
    depth = 0
    for event in yaml.parse(text, Loader=_LineLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise ConfigError(f"line {line}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_shape(root: yaml.Node | None) -> None:
    """Refuse deep nesting, many aliases and alias bombs (a few lines that expand to billions of nodes). An alias
    is the same node object reached twice, so sizes are counted once per node and reused."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    seen_paths = 0
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            line = node.start_mark.line + 1
            raise ConfigError(f"line {line}: nested more than {MAX_DEPTH} levels deep")
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_NODES:
                raise ConfigError(f"the config expands to more than {MAX_NODES} values (YAML aliases?)")
            continue
        if id(node) in sizes:
            seen_paths += 1  # reached again through an alias
            if seen_paths > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases")
            continue
        sizes[id(node)] = 0  # in progress; a node that contains itself is refused by PyYAML's safe loader
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node))


def _line_index(node: yaml.Node | None, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path of the document to the 1-based line where it starts (through aliases too: the shape
    check has bounded how far they expand)."""
    lines: dict[tuple[Any, ...], int] = {}
    if node is None:
        return lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            sub = _line_index(value_node, (*path, key))
            sub.pop((*path, key), None)
            lines.update(sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def _where(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            hints.append(f"unknown key {key!r}{hint}")
        return "; ".join(hints) + f"; allowed keys: {', '.join(allowed)}"
    if error.validator == "pattern":
        desc = error.schema.get("description", "")
        return f"{error.instance!r} is not allowed here. {desc}".strip()
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    return error.message


def _error_path(error: jsonschema.ValidationError) -> tuple[Any, ...]:
    """The key path an error is about; for an unknown key, the key itself (so its line is reported)."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)
        if unknown:
            return (*path, unknown[0])
    return path


def parse(text: str, path: Path) -> PlatformConfig:
    """Validate config text and build the config. Raises ConfigError naming file, key and line."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{path}: the config is {len(text)} bytes; a platform config is at most {MAX_BYTES}")
    try:
        _check_depth(text)
        node = yaml.compose(text, Loader=_LineLoader)
        _check_shape(node)
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the config is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(data).__name__}")
    lines = _line_index(node)

    def fail(key_path: tuple[Any, ...], message: str) -> ConfigError:
        line = lines.get(key_path) or lines.get(key_path[:-1])
        at = f" (line {line})" if line else ""
        return ConfigError(f"{path}: {_where(key_path)}{at}: {message}")

    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(str(fail(_error_path(e), _schema_message(e))) for e in errors))
    return _build(data, path, fail)


def identifier(name: str) -> str:
    """The form a name takes where only letters, digits and one separator are allowed (environment variables,
    SQL identifiers, Kubernetes names): two names with the same identifier would share secrets."""
    return re.sub(r"[^a-z0-9]", "_", name.lower())


def _build(data: dict[str, Any], path: Path, fail: Any) -> PlatformConfig:
    users: list[User] = []
    idents: dict[str, str] = {}
    for i, raw in enumerate(data["users"]):
        if raw["name"] in {u.name for u in users}:
            raise fail(("users", i, "name"), f"user {raw['name']!r} is listed twice")
        if (other := idents.get(identifier(raw["name"]))) is not None:
            raise fail(("users", i, "name"),
                       f"users {other!r} and {raw['name']!r} become the same name in environment variables, "
                       "database roles and Kubernetes names; rename one")  # fmt: skip
        idents[identifier(raw["name"])] = raw["name"]
        users.append(User(name=raw["name"], admin=raw.get("admin", False), operator=raw.get("operator", False)))
    user_names = {u.name for u in users}

    storage = Storage(**data.get("storage", {}))
    ports = Ports(**data.get("ports", {}))
    teams: list[Team] = []
    used_ports = ports.reserved()
    oidc = data.get("hub", {}).get("auth", {}).get("type") == "oidc"
    gateway = DaskGateway(enabled=data.get("dask_gateway", {}).get("enabled", False),
                          clusters=ClusterLimits(**data.get("dask_gateway", {}).get("clusters", {})))  # fmt: skip
    if problem := gateway.clusters.problem():
        raise fail(("dask_gateway", "clusters"), problem)
    for i, raw in enumerate(data["teams"]):
        name = raw["name"]
        if name in {t.name for t in teams}:
            raise fail(("teams", i, "name"), f"team {name!r} is defined twice")
        if len(storage.bucket_prefix + name) < 3:
            raise fail(
                ("teams", i, "name"),
                f"bucket name {storage.bucket_prefix + name!r} is shorter than S3's minimum of 3 characters",
            )
        if oidc and raw.get("members"):
            raise fail(("teams", i, "members"),
                       f"team {name!r} lists members, but with hub.auth.type oidc the provider's groups claim "
                       f"decides membership at each login (a group named {name!r}); remove members")  # fmt: skip
        for key in ("members", "admins"):
            for j, member in enumerate(raw.get(key, [])):
                if member not in user_names:
                    raise fail(
                        ("teams", i, key, j),
                        f"{member!r} in team {name!r} is not a user; add it under users first",
                    )
            if len(set(raw.get(key, []))) != len(raw.get(key, [])):
                raise fail(("teams", i, key), f"a name is listed twice in {key} of team {name!r}")
        for j, admin in enumerate(raw.get("admins", [])):
            if admin not in raw.get("members", []):
                raise fail(
                    ("teams", i, "admins", j),
                    f"admin {admin!r} of team {name!r} is not in its members",
                )
        dask = dataclasses.replace(gateway.clusters, **raw.get("dask_gateway", {}))
        if problem := dask.problem():
            raise fail(("teams", i, "dask_gateway"), f"team {name!r}: {problem}")
        port = raw.get("port")
        if port is not None:
            if port + Ports.GRPC_OFFSET in range(ports.s3, ports.s3 + Ports.SPANS["s3"]):
                raise fail(("teams", i, "port"), f"port {port} is SeaweedFS's gRPC port of ports.s3 - 10000")
            if port in used_ports:
                raise fail(("teams", i, "port"), f"port {port} is already used by {used_ports[port]}")
            used_ports[port] = f"team {name!r}"
        teams.append(
            Team(
                name=name,
                members=tuple(raw.get("members", [])),
                admins=tuple(raw.get("admins", [])),
                port=port,
                gpu=raw.get("gpu", False),
                dask=dask,
            )
        )
    owners: dict[int, str] = {}
    for key, span in Ports.SPANS.items():
        base = getattr(ports, key)
        for port in range(base, base + span):
            if port in owners:
                raise fail(("ports", key), f"port {port} of ports.{key} collides with {owners[port]}")
            owners[port] = f"ports.{key}"
    for port in range(ports.s3, ports.s3 + Ports.SPANS["s3"]):
        if (twin := port + Ports.GRPC_OFFSET) in owners:
            raise fail(("ports", "s3"), f"SeaweedFS's gRPC port {twin} (port {port} + 10000) collides with "
                                        f"{owners[twin]}")  # fmt: skip
    hub = _build_hub(data.get("hub", {}), fail)
    if hub.subdomains:
        for key, url in (("hub", hub.public_url), ("containers", data.get("containers", {}).get("public_url", ""))):
            if url and (problem := _subdomain_problem(url)):
                raise fail((key, "public_url"), f"with hub.subdomains, {problem}")
    state_dir = Path(data.get("state_dir", ".cubelab"))
    if not state_dir.is_absolute():
        state_dir = path.parent / state_dir
    if (folder := os.path.normpath(state_dir)) in SYSTEM_FOLDERS or folder == os.path.expanduser("~"):
        raise fail(("state_dir",), f"{folder} is a system folder; give cubelab a folder of its own, "
                                   "e.g. /var/lib/cubelab/state or ./.cubelab")  # fmt: skip
    return PlatformConfig(
        path=path,
        state_dir=state_dir,
        users=tuple(users),
        teams=tuple(teams),
        storage=storage,
        ports=ports,
        supervision=Supervision(**data.get("supervision", {})),
        monitoring=Monitoring(**data.get("monitoring", {})),
        dask_gateway=gateway,
        kernels=Kernels(**data.get("kernels", {})),
        hub=hub,
        containers=_build_containers(data.get("containers", {})),
    )


def _build_containers(raw: dict[str, Any]) -> Containers:
    raw = dict(raw)
    postgres = ExternalPostgres(**raw.pop("postgres")) if "postgres" in raw else None
    s3 = ExternalS3(endpoint=raw.pop("s3")["endpoint"].rstrip("/")) if "s3" in raw else None
    profiles, defaults = raw.pop("profiles", {}), Containers()
    cpu = dataclasses.replace(defaults.cpu_profile, **profiles.get("cpu", {}))
    gpu = dataclasses.replace(defaults.gpu_profile, **profiles.get("gpu", {}))
    return Containers(**raw, postgres=postgres, s3=s3, cpu_profile=cpu, gpu_profile=gpu)


def _subdomain_problem(url: str) -> str:
    """Why url cannot be the base of JupyterHub's subdomains, or ''."""
    parts = urllib.parse.urlsplit(url)
    if parts.path not in ("", "/") or parts.query:
        return f"the public URL must be scheme://host[:port] with no path ({url!r}): users are on USER.HOST/"
    host = parts.hostname or ""
    if not host or host.replace(".", "").isdigit() or ":" in host:
        return f"the public URL needs a host name, not an address ({url!r}): users are on USER.HOST"
    return ""


_OIDC_REQUIRED = ("client_id", "client_secret_file", "authorize_url", "token_url", "userdata_url")


def _build_hub(raw: dict[str, Any], fail: Any) -> Hub:
    auth_raw = dict(raw.get("auth", {}))
    if auth_raw.get("type") == "oidc":
        for key in _OIDC_REQUIRED:
            if not auth_raw.get(key):
                raise fail(("hub", "auth"), f"auth type oidc needs {key}")
    if "scope" in auth_raw:
        auth_raw["scope"] = tuple(auth_raw["scope"])
    return Hub(
        auth=HubAuth(**auth_raw),
        cull_idle_seconds=raw.get("cull_idle_seconds", Hub.cull_idle_seconds),
        public_url=raw.get("public_url", ""),
        subdomains=raw.get("subdomains", False),
        spawn_timeout_seconds=raw.get("spawn_timeout_seconds", Hub.spawn_timeout_seconds),
    )


def load(path: str | Path) -> PlatformConfig:
    """Read and validate the platform config at path."""
    path = Path(path).absolute()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from None
    return parse(text, path)
