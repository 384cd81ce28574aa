"""S3 isolation: a team's identity reaches its own bucket and nothing of another team's."""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest

from platform_tests.conftest import s3_client

DENIED = ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def denied(call: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    code = info.value.response["Error"]["Code"]
    assert code in DENIED, f"expected a denial, got {code}"
    return code


@pytest.fixture(scope="module")
def teams(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    if len(deployment["teams"]) < 2:
        pytest.fail("the deployment description must list at least two teams")
    return deployment["teams"]


def client_of(deployment: dict[str, Any], team: dict[str, Any]) -> Any:
    return s3_client(deployment, team["s3"]["access_key"], team["s3"]["secret_key"])


def test_team_reaches_its_own_bucket(deployment: dict[str, Any], teams: list[dict[str, Any]]) -> None:
    for team in teams:
        s3 = client_of(deployment, team)
        key = "platform-test/own.txt"
        s3.put_object(Bucket=team["bucket"], Key=key, Body=b"mine")
        assert s3.get_object(Bucket=team["bucket"], Key=key)["Body"].read() == b"mine"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=team["bucket"], Prefix="platform-test/")["Contents"]]
        assert key in keys
        s3.delete_object(Bucket=team["bucket"], Key=key)


@pytest.mark.parametrize(("me", "other"), [(0, 1), (1, 0)])
def test_team_is_denied_on_another_teams_bucket(
    deployment: dict[str, Any], teams: list[dict[str, Any]], me: int, other: int
) -> None:
    mine, theirs = teams[me], teams[other]
    owner = client_of(deployment, theirs)
    owner.put_object(Bucket=theirs["bucket"], Key="platform-test/secret.txt", Body=b"theirs")
    intruder = client_of(deployment, mine)
    bucket = theirs["bucket"]
    denied(lambda: intruder.get_object(Bucket=bucket, Key="platform-test/secret.txt"))
    denied(lambda: intruder.list_objects_v2(Bucket=bucket))
    denied(lambda: intruder.put_object(Bucket=bucket, Key="platform-test/planted.txt", Body=b"x"))
    denied(lambda: intruder.delete_object(Bucket=bucket, Key="platform-test/secret.txt"))
    # Nothing was planted and nothing was lost.
    keys = [o["Key"] for o in owner.list_objects_v2(Bucket=bucket, Prefix="platform-test/")["Contents"]]
    assert "platform-test/planted.txt" not in keys and "platform-test/secret.txt" in keys
    # The tracking server's artefacts of the other team are out of reach too.
    denied(lambda: intruder.list_objects_v2(Bucket=bucket, Prefix=theirs["artifact_prefix"] + "/"))


def test_unknown_and_anonymous_credentials_are_refused(deployment: dict[str, Any], teams: list[dict[str, Any]]) -> None:
    import requests

    bucket = teams[0]["bucket"]
    denied(lambda: s3_client(deployment, "CLNOSUCHKEY", "nope-nope-nope").list_objects_v2(Bucket=bucket))
    wrong_secret = s3_client(deployment, teams[0]["s3"]["access_key"], "wrong-secret")
    denied(lambda: wrong_secret.list_objects_v2(Bucket=bucket))
    anonymous = requests.get(f"{deployment['s3_endpoint']}/{bucket}", timeout=5)
    assert anonymous.status_code in (401, 403)
