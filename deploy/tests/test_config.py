"""The platform config: the documented example is valid; each kind of bad input is refused, clearly."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cubelab.config import ConfigError, load, parse

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "cubelab.example.yaml"

VALID = """\
users:
  - name: alice
  - name: bob
    admin: true
teams:
  - name: ocean
    members: [alice, bob]
    admins: [alice]
  - name: sea-ice
    members: [bob]
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(textwrap.dedent(text), Path("/cfg/cubelab.yaml"))
    return str(info.value)


def test_example_config_is_valid() -> None:
    config = load(EXAMPLE)
    assert [t.name for t in config.teams] == ["ocean", "land"]
    assert config.state_dir == REPO / ".cubelab"
    assert config.bucket(config.team("ocean")) == "cubelab-ocean"
    assert {u.name for u in config.users if u.admin} == {"dave"}


def test_valid_config_and_derived_names() -> None:
    config = parse(VALID, Path("/cfg/cubelab.yaml"))
    ice = config.team("sea-ice")
    assert (ice.database, ice.role, ice.service) == ("mlflow_sea_ice", "team_sea_ice", "mlflow-sea-ice")
    assert config.state_dir == Path("/cfg/.cubelab")
    assert config.ports.postgres == 15432


def test_unknown_key_is_named_with_line_and_suggestion() -> None:
    message = error_of(VALID.replace("    admins: [alice]", "    admins: [alice]\n    membres: [bob]"))
    assert "teams[0].membres" in message and "unknown key 'membres'" in message
    assert "line 9" in message
    assert "did you mean 'members'" in message


def test_unknown_top_level_key() -> None:
    message = error_of(VALID + "storrage: {}\n")
    assert "unknown key 'storrage'" in message and "did you mean 'storage'" in message


def test_duplicate_team() -> None:
    message = error_of(VALID + "  - name: ocean\n    members: [alice]\n")
    assert "teams[2].name" in message and "'ocean' is defined twice" in message and "line 11" in message


@pytest.mark.parametrize("name", ["Ocean", "o", "ocean_1", "-ocean", "ocean-", "a--b", "1team", "x" * 31, "drop;table"])
def test_team_name_that_cannot_be_a_database_or_bucket_name(name: str) -> None:
    message = error_of(VALID.replace("name: ocean", f"name: {name!r}"))
    assert "teams[0].name" in message


def test_bucket_name_too_short_without_prefix() -> None:
    text = VALID.replace("name: ocean", "name: oc") + "storage:\n  bucket_prefix: ''\n"
    assert "shorter than S3's minimum" in error_of(text)


def test_member_who_is_not_a_user() -> None:
    message = error_of(VALID.replace("members: [alice, bob]", "members: [alice, zoe]"))
    assert "'zoe'" in message and "not a user" in message and "teams[0].members[1]" in message and "line 7" in message


def test_admin_who_is_not_a_member() -> None:
    message = error_of(VALID.replace("members: [bob]", "members: [bob]\n    admins: [alice]"))
    assert "admin 'alice'" in message and "not in its members" in message


def test_duplicate_user_and_duplicate_key() -> None:
    assert "listed twice" in error_of(VALID.replace("  - name: bob\n", "  - name: alice\n"))
    message = error_of("users: []\nteams: []\nusers: []\n")
    assert "line 3" in message and "'users' appears twice" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("users: [\n  - name: a\n", "not valid YAML"),
        ("users:\n  - name: alice\n    admin: maybe\nteams: []\n", "users[0].admin"),
        ("- just\n- a list\n", "must be a mapping"),
        ("teams: []\n", "'users' is required"),
        ("users: []\nteams: []\nports: {s3: 60000}\n", "ports.s3"),
    ],
)
def test_malformed_files(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_team_port_collision() -> None:
    text = VALID.replace("members: [bob]", "members: [bob]\n    port: 15432")
    assert "already used by ports.postgres" in error_of(text)


def test_shared_ports_that_overlap() -> None:
    assert "collides with ports.postgres" in error_of(VALID + "ports: {postgres: 18003, s3: 18000}\n")
    assert "ports.hub collides with ports.s3" in error_of(VALID + "ports: {s3: 18000, hub: 18004}\n")


OIDC = """
hub:
  auth: {type: oidc, client_id: cubelab, client_secret_file: s, authorize_url: "https://idp/a",
         token_url: "https://idp/t", userdata_url: "https://idp/u"}
"""


def test_with_oidc_membership_comes_from_the_provider_only() -> None:
    message = error_of(VALID + OIDC)
    assert "teams[0].members" in message and "groups claim" in message
    without = VALID.replace("    members: [alice, bob]\n    admins: [alice]\n", "").replace("    members: [bob]\n", "")
    config = parse(textwrap.dedent(without + OIDC), Path("/cfg/cubelab.yaml"))
    assert [t.members for t in config.teams] == [(), ()]


def test_oidc_auth_needs_its_endpoints() -> None:
    without = VALID.replace("    members: [alice, bob]\n    admins: [alice]\n", "").replace("    members: [bob]\n", "")
    message = error_of(without + "hub:\n  auth:\n    type: oidc\n    client_id: cubelab\n")
    assert "hub.auth" in message and "needs client_secret_file" in message
    assert "hub.auth.type" in error_of(VALID + "hub:\n  auth:\n    type: ldap\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.yaml")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cubelab", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )


@pytest.mark.parametrize("command", ["up", "apply", "check"])
def test_cli_refuses_bad_config_and_changes_nothing(tmp_path: Path, command: str) -> None:
    config = tmp_path / "cubelab.yaml"
    config.write_text(VALID.replace("members: [alice, bob]", "members: [alice, zoe]"))
    before = sorted(p.name for p in tmp_path.iterdir())
    done = _cli("-c", str(config), command, cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid config" in done.stderr and "'zoe'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no state dir was made


def test_cli_check_accepts_the_example() -> None:
    done = _cli("-c", str(EXAMPLE), "check", cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "2 teams" in done.stdout


def test_cli_help_lists_commands() -> None:
    done = _cli("--help", cwd=REPO)
    for command in ("up", "apply", "down", "status", "logs", "check"):
        # a line of the command list, not a word inside another one ("JupyterHub" holds "up")
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), command


def test_container_settings_and_gpu_teams() -> None:
    extra = "    gpu: true\ncontainers:\n  registry: ghcr.io/lab/cubelab\n  tag: '1.2'\n"
    config = parse(VALID + extra, Path("/c.yaml"))
    assert [t.name for t in config.teams if t.gpu] == ["sea-ice"]
    assert config.containers.image("hub") == "ghcr.io/lab/cubelab/hub:1.2"
    assert parse(VALID, Path("/c.yaml")).containers.image("tracking") == "cubelab/tracking:latest"
    assert "containers.tag" in error_of(VALID + "containers:\n  tag: 'bad tag'\n")
    assert "containers.public_url" in error_of(VALID + "containers:\n  public_url: hub.example.org\n")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(("text", "expected"), [
    (BOMB, "more than 100000 values"),
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than 32 levels"),
    ("a: " + "{b: " * 40 + "1" + "}" * 40 + "\n", "nested more than 32 levels"),
    ("x: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(150)), "more than 100 YAML aliases"),
    ("#" * (2 << 20), "a platform config is at most"),
])  # fmt: skip
def test_hostile_yaml_fails_fast_with_a_message(text: str, expected: str) -> None:
    started = time.monotonic()
    assert expected in error_of(text)
    assert time.monotonic() - started < 1.0


def test_cli_check_on_an_alias_bomb_exits_2_quickly(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(BOMB)
    done = _cli("-c", str(tmp_path / "bomb.yaml"), "check", cwd=tmp_path)
    assert done.returncode == 2 and "more than 100000 values" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("folder", ["/tmp", "/", "/etc", "/var/lib", "/tmp/", "/usr/../tmp"])
def test_system_folders_are_not_state_dirs(folder: str) -> None:
    assert "is a system folder" in error_of(VALID + f"state_dir: {folder}\n")


def test_names_that_collide_as_identifiers_are_refused() -> None:
    text = VALID.replace("  - name: bob\n", "  - name: bob\n  - name: a-b\n  - name: a_b\n")
    assert "'a-b' and 'a_b' become the same name" in error_of(text)


def test_seaweedfs_grpc_twins_are_reserved() -> None:
    # ports.s3 18333 uses 18333..18339 and their gRPC twins 28333..28339.
    assert "gRPC" in error_of(VALID.replace("members: [bob]", "members: [bob]\n    port: 28335"))
    assert "gRPC" in error_of(VALID + "ports: {s3: 18333, hub: 28334}\n")
    config = parse(VALID, Path("/c.yaml"))
    assert config.ports.reserved()[28333].startswith("ports.s3")


def test_operators_are_a_role_apart_from_hub_admins() -> None:
    from cubelab.hub.render import OPERATOR_SCOPES, roles

    text = VALID.replace("  - name: alice\n", "  - name: alice\n  - name: olga\n    operator: true\n")
    config = parse(text, Path("/c.yaml"))
    assert config.operators == ("olga",) and "olga" not in config.admins
    role = next(r for r in roles(config, culler=False) if r["name"] == "cubelab-operator")
    assert role["users"] == ["olga"]
    assert not {"tokens", "admin:users", "groups", "admin:groups", "access:services"} & set(OPERATOR_SCOPES)
    assert not any(r["name"] == "cubelab-operator" for r in roles(parse(VALID, Path("/c.yaml")), culler=False))
