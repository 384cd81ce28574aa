"""SeaweedFS as every target runs it: one `weed mini` whose S3 API is the only part users may reach.

`weed mini` also runs a master, a volume server, a filer and an admin server, each with a gRPC twin on its port
+ 10000, and the S3 API has a gRPC twin too. None of them checks the teams' S3 identities: the filer lists and
serves every bucket, and the S3 gRPC `Configure` call replaces the identities. Each target therefore keeps
them out of users' reach its own way (embedded: an iptables owner match; compose: a separate network behind a
one-port relay; Helm: a NetworkPolicy that admits the S3 port only), and each lists them the same way, so that
platform_tests can check from a user's kernel that none answers.
"""

from __future__ import annotations

from pathlib import Path

# The internal servers, in the order the embedded stack places them on the ports after the S3 port.
SERVERS = ("master", "volume", "filer", "admin")
GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on each HTTP port + 10000
SPAN = 1 + len(SERVERS)  # ports one stack takes from its S3 port (and their gRPC twins)
# Iceberg and Lance catalog servers: cubelab uses neither, so they are not started at all.
NOT_STARTED = ("s3.port.iceberg", "s3.port.lance")
# The fixed ports inside a container or pod (compose, Helm): weed's own defaults, written out.
CONTAINER_PORTS = {"s3": 8333, "master": 9333, "volume": 8080, "filer": 8888, "admin": 23646}


def consecutive_ports(s3_port: int) -> dict[str, int]:
    """The embedded stack's layout: the S3 API on s3_port, the internal servers on the ports after it."""
    return {"s3": s3_port} | {name: s3_port + 1 + i for i, name in enumerate(SERVERS)}


def mini_args(
    data_dir: str | Path, identities: str | Path, ports: dict[str, int], bind: str, advertise: str = ""
) -> list[str]:
    """The arguments of `weed mini` (after the binary): ports as given, everything bound to bind, the servers
    telling each other to meet at advertise (default: the machine's own address)."""
    args = ["mini", f"-dir={data_dir}"] + ([f"-ip={advertise}"] if advertise else [])
    args += [
        f"-ip.bind={bind}", f"-s3.port={ports['s3']}", f"-s3.config={identities}",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
    ]  # fmt: skip
    args += [f"-{name}.port={ports[name]}" for name in SERVERS]
    args += [f"-{flag}=0" for flag in NOT_STARTED]
    return args


def internal_ports(ports: dict[str, int]) -> list[int]:
    """Every port weed listens on except the S3 API: the internal servers and every gRPC twin (S3's too)."""
    http = [ports[name] for name in SERVERS]
    return sorted(http + [p + GRPC_OFFSET for p in [ports["s3"], *http]])


def container_args() -> list[str]:
    """`weed mini`'s arguments in a container or pod (compose, Helm): listening on the container's addresses,
    where the network (a network of its own, a NetworkPolicy) keeps users off everything but the S3 port."""
    everywhere = "0.0.0.0"  # noqa: S104 - the container's own addresses; see above
    return mini_args("/data", "/etc/seaweedfs/identities.json", CONTAINER_PORTS, bind=everywhere)
