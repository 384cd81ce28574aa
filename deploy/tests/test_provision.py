"""`python -m cubelab.provision` as containers run it: everything from the environment (pure logic; the
databases and buckets part runs against real services in the life-cycle tests and the image tests)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cubelab.provision import TeamSecrets, describe, main, user_password_var

ENV = {
    "CUBELAB_TEAMS": "ocean sea-ice",
    "CUBELAB_BUCKET_PREFIX": "lab-",
    "S3_ADMIN_ACCESS_KEY": "ADMINKEY",
    "S3_ADMIN_SECRET_KEY": "adminsecret",
    "TEAM_OCEAN_S3_ACCESS_KEY": "OCEANKEY",
    "TEAM_OCEAN_S3_SECRET_KEY": "oceansecret",
    "TEAM_SEA_ICE_S3_ACCESS_KEY": "ICEKEY",
    "TEAM_SEA_ICE_S3_SECRET_KEY": "icesecret",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    return ENV


def test_identities_limit_each_team_to_its_bucket(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "s3" / "identities.json"
    main(["s3-identities", str(path)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    identities = {i["name"]: i for i in json.loads(path.read_text())["identities"]}
    assert identities["team-sea-ice"]["credentials"] == [{"accessKey": "ICEKEY", "secretKey": "icesecret"}]
    assert identities["team-sea-ice"]["actions"] == ["Read:lab-sea-ice", "Write:lab-sea-ice", "List:lab-sea-ice",
                                                     "Tagging:lab-sea-ice"]  # fmt: skip
    assert "Admin" in identities["cubelab-admin"]["actions"]


def test_a_missing_secret_is_named(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TeamSecrets("sea-ice").s3_secret_key)
    with pytest.raises(SystemExit, match="TEAM_SEA_ICE_S3_SECRET_KEY is not set"):
        main(["s3-identities", str(tmp_path / "identities.json")])
    assert not (tmp_path / "identities.json").exists()


def test_description_for_platform_tests(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    extra = {"S3_ENDPOINT": "http://s3:8333", "CUBELAB_HUB_URL": "http://hub:8000",
             "CUBELAB_HUB_API_URL": "http://hub:8081/hub/api", "CUBELAB_ADMIN_TOKEN": "tok",
             TeamSecrets("ocean").tracking_uri: "http://tracking-ocean:5000/services/mlflow-ocean",
             TeamSecrets("sea-ice").tracking_uri: "http://tracking-sea-ice:5000/services/mlflow-sea-ice",
             "CUBELAB_USERS": "alice dave", "CUBELAB_ADMINS": "dave", user_password_var("alice"): "pw",
             TeamSecrets("ocean").members: "alice", TeamSecrets("sea-ice").members: "dave"}  # fmt: skip
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    describe(tmp_path / "d.json")
    d = json.loads((tmp_path / "d.json").read_text())
    assert [t["name"] for t in d["teams"]] == ["ocean", "sea-ice"]
    assert d["teams"][1]["tracking_uri"] == "http://tracking-sea-ice:5000/services/mlflow-sea-ice"
    assert d["teams"][1]["bucket"] == "lab-sea-ice" and d["teams"][1]["s3"]["access_key"] == "ICEKEY"
    assert d["teams"][0]["members"] == ["alice"]
    assert d["users"] == [{"name": "alice", "admin": False, "initial_password": "pw"}, {"name": "dave", "admin": True}]
    assert d["hub_admin_token"] == "tok"
