"""Secret settings from AWS Secrets Manager (``X_SECRET_ARN``), against moto with real boto3 and botocore.

Nothing of ours is mocked. GetSecretValue calls are counted by a botocore handler registered for every
client created during the test (``botocore.handlers.BUILTIN_HANDLERS``, as moto itself hooks in), so
"fetched once" is what botocore was really asked. Access denied comes from moto's IAM enforcement, and
also as the exact answer AWS sends (moto answers a denial in XML with HTTP 403; AWS in JSON with 400),
injected at the HTTP layer so botocore parses real wire bytes. An unreachable endpoint is a closed port.
Fake AWS credentials only; nothing here can reach AWS.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.handlers
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

from common import aws_secrets, constants
from common.config import ConfigurationError, Settings, load_settings
from tests.helpers import ROOT

REGION = "us-east-1"
DB_URL = "postgresql://app:db-pw-7f3a@db.internal:5432/koinonia?connection_limit=5"
API_KEY = "KEY_from_secrets_manager"
PUBLIC_KEY = base64.b64encode(b"p" * 32).decode()
ENCRYPTION_KEY = base64.b64encode(b"k" * 32).decode()
LOOKUP_KEY = base64.b64encode(b"h" * 32).decode()
AWS_VARIABLES = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
)  # fmt: skip
# What the settings need besides the secrets under test (none of them secret-bearing).
PLAIN = {constants.TELNYX_BASE_URL_ENV: "http://127.0.0.1:9/v2"}


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[pytest.MonkeyPatch]:
    """No setting, no ``*_SECRET_ARN``, no ``.env`` and no AWS profile from the developer; fake credentials."""
    monkeypatch.chdir(tmp_path)
    settings = {name.upper() for name in Settings.model_fields}
    arns = {name + aws_secrets.ARN_SUFFIX for name in aws_secrets.SECRET_SETTINGS}
    for name in list(os.environ):
        if name.upper() in settings | arns or name in AWS_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in PLAIN.items():
        monkeypatch.setenv(name, value)
    aws_secrets.clear_cache()
    yield monkeypatch
    aws_secrets.clear_cache()


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SecretId of every GetSecretValue any botocore client makes from now on."""
    seen: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params["SecretId"])

    handler = ("before-parameter-build.secrets-manager.GetSecretValue", record)
    monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [*botocore.handlers.BUILTIN_HANDLERS, handler])
    return seen


@pytest.fixture
def sm() -> Iterator[Any]:
    """moto in-process; yields a Secrets Manager client to create secrets with."""
    with mock_aws():
        yield boto3.session.Session().client("secretsmanager", region_name=REGION)


def create(sm: Any, name: str, value: str) -> str:
    return str(sm.create_secret(Name=name, SecretString=value)["ARN"])


def configuration_error() -> str:
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    line = str(err.value)
    assert line.startswith("configuration error: ")
    assert "\n" not in line
    return line


def test_plain_secrets_by_arn_and_by_name(env, sm, fetched):
    db_arn = create(sm, "koinonia/database-url", DB_URL + "\n")  # stored from a file: the newline goes
    create(sm, "koinonia/telnyx-api-key", API_KEY)
    env.setenv("DATABASE_URL_SECRET_ARN", db_arn)
    env.setenv("TELNYX_API_KEY_SECRET_ARN", "koinonia/telnyx-api-key")
    env.setenv(constants.ENCRYPTION_KEY_ENV, ENCRYPTION_KEY)  # secrets and plain variables mix
    env.setenv(constants.LOOKUP_KEY_ENV, LOOKUP_KEY)
    settings = load_settings()
    assert settings.database_url == DB_URL
    assert settings.database.password == "db-pw-7f3a"
    assert settings.telnyx_api_key == API_KEY
    assert settings.encryption_key == ENCRYPTION_KEY
    assert sorted(fetched) == sorted([db_arn, "koinonia/telnyx-api-key"])


def test_json_fields_of_one_secret_are_fetched_once(env, sm, fetched):
    app = create(sm, "koinonia/app", json.dumps({
        "encryption_key": ENCRYPTION_KEY, "lookup_key": LOOKUP_KEY, "telnyx_api_key": API_KEY,
        "telnyx_public_key": PUBLIC_KEY, "database_url": DB_URL,
    }))  # fmt: skip
    for variable in ("ENCRYPTION_KEY", "LOOKUP_KEY", "TELNYX_API_KEY", "TELNYX_PUBLIC_KEY", "DATABASE_URL"):
        env.setenv(variable + "_SECRET_ARN", f"{app}#{variable.lower()}")
    settings = load_settings()
    assert (settings.encryption_key_bytes, settings.lookup_key_bytes) == (b"k" * 32, b"h" * 32)
    assert (settings.telnyx_api_key, settings.telnyx_public_key) == (API_KEY, PUBLIC_KEY)
    assert settings.database.host == "db.internal"
    assert fetched == [app]


def test_values_are_cached_for_the_process(env, sm, fetched):
    arn = create(sm, "koinonia/app", json.dumps({"api": API_KEY}))
    env.setenv("TELNYX_API_KEY_SECRET_ARN", arn + "#api")
    env.setenv("DATABASE_URL_SECRET_ARN", create(sm, "koinonia/db", DB_URL))
    env.setenv(constants.ENCRYPTION_KEY_ENV, ENCRYPTION_KEY)
    env.setenv(constants.LOOKUP_KEY_ENV, LOOKUP_KEY)
    assert load_settings().telnyx_api_key == API_KEY
    assert len(fetched) == 2
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"api": "KEY_rotated"}))
    assert load_settings().telnyx_api_key == API_KEY  # a warm process keeps what its cold start read
    assert len(fetched) == 2
    aws_secrets.clear_cache()
    assert load_settings().telnyx_api_key == "KEY_rotated"
    assert len(fetched) == 4


def test_environment_variables_work_unchanged_without_any_arn(env, fetched):
    env.setenv(constants.DATABASE_URL_ENV, DB_URL)
    env.setenv(constants.ENCRYPTION_KEY_ENV, ENCRYPTION_KEY)
    env.setenv(constants.LOOKUP_KEY_ENV, LOOKUP_KEY)
    env.setenv(constants.TELNYX_API_KEY_ENV, API_KEY)
    settings = load_settings()  # no moto here: a call to AWS would fail
    assert (settings.database_url, settings.telnyx_api_key) == (DB_URL, API_KEY)
    assert fetched == []


def test_a_local_cold_start_does_not_import_boto3(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith(aws_secrets.ARN_SUFFIX)}
    env.update({
        constants.DATABASE_URL_ENV: DB_URL, constants.ENCRYPTION_KEY_ENV: ENCRYPTION_KEY,
        constants.LOOKUP_KEY_ENV: LOOKUP_KEY, constants.TELNYX_API_KEY_ENV: API_KEY, **PLAIN,
    })  # fmt: skip
    code = (
        "import sys; from common.config import load_settings; load_settings();"
        " print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_value_and_its_arn_together_are_refused(env, sm, fetched, tmp_path, where):
    env.setenv("DATABASE_URL_SECRET_ARN", create(sm, "koinonia/db", DB_URL))
    if where == "environment":
        env.setenv(constants.DATABASE_URL_ENV, DB_URL)
    else:
        (tmp_path / ".env").write_text(f"DATABASE_URL={DB_URL}\n")
    line = configuration_error()
    assert "DATABASE_URL (in the " in line and "DATABASE_URL_SECRET_ARN (in the environment) are both set" in line
    assert "remove DATABASE_URL" in line
    assert "db-pw-7f3a" not in line
    assert fetched == []  # refused before anything is read


def test_an_empty_value_beside_its_arn_is_unset(env, sm, tmp_path):
    """A .env copied from .env.example has ``ENCRYPTION_KEY=``; the secret fills it."""
    (tmp_path / ".env").write_text(f"ENCRYPTION_KEY=\nENCRYPTION_KEY_SECRET_ARN={create(sm, 'k', ENCRYPTION_KEY)}\n")
    env.setenv(constants.DATABASE_URL_ENV, DB_URL)
    env.setenv(constants.LOOKUP_KEY_ENV, LOOKUP_KEY)
    env.setenv(constants.TELNYX_API_KEY_ENV, API_KEY)
    assert load_settings().encryption_key == ENCRYPTION_KEY


def test_a_missing_secret_says_check_the_arn(env, sm):
    missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:koinonia/nope-AbCdEf"
    env.setenv("OPERATOR_TOKEN_SECRET_ARN", missing)
    line = configuration_error()
    assert f"the secret {missing} (named by OPERATOR_TOKEN_SECRET_ARN) was not found in {REGION}" in line
    assert "check the ARN" in line


def test_a_value_put_where_the_arn_goes_is_not_echoed(env, sm):
    env.setenv("DATABASE_URL_SECRET_ARN", DB_URL)
    line = configuration_error()
    assert "DATABASE_URL_SECRET_ARN is invalid: expected a secret's ARN or name" in line
    assert "db-pw-7f3a" not in line
    env.setenv("DATABASE_URL_SECRET_ARN", ENCRYPTION_KEY)  # a valid secret *name*: looked up, never printed
    line = configuration_error()
    assert "the secret named by DATABASE_URL_SECRET_ARN was not found" in line
    assert ENCRYPTION_KEY not in line


def test_a_missing_json_field_names_it_and_the_fields_there(env, sm):
    arn = create(sm, "koinonia/app", json.dumps({"api_key": API_KEY, "public_key": PUBLIC_KEY}))
    env.setenv("TELNYX_API_KEY_SECRET_ARN", arn + "#apikey")
    line = configuration_error()
    assert "has no field 'apikey' (its fields: api_key, public_key)" in line
    assert "TELNYX_API_KEY_SECRET_ARN" in line
    assert API_KEY not in line and PUBLIC_KEY not in line


@pytest.mark.parametrize("stored", ["KEY_plain_text", json.dumps(["a", "list"]), ""])
def test_a_field_of_a_secret_that_is_no_json_object(env, sm, stored):
    env.setenv("TELNYX_API_KEY_SECRET_ARN", create(sm, "koinonia/key", stored or " ") + "#api_key")
    line = configuration_error()
    assert "is not a JSON object, but #api_key asks for one of its fields" in line
    assert "KEY_plain_text" not in line


def test_a_field_that_is_not_a_string(env, sm):
    env.setenv("REDIS_URL_SECRET_ARN", create(sm, "koinonia/app", json.dumps({"redis": {"url": "x"}})) + "#redis")
    assert "field 'redis' of the secret" in configuration_error()


def test_a_binary_secret_is_refused(env, sm):
    arn = sm.create_secret(Name="koinonia/bin", SecretBinary=b"\x00\x01")["ARN"]
    env.setenv("LOOKUP_KEY_SECRET_ARN", arn)
    assert "holds binary data (SecretBinary), not text" in configuration_error()


def test_a_secret_scheduled_for_deletion(env, sm):
    arn = create(sm, "koinonia/old", API_KEY)
    sm.delete_secret(SecretId=arn)
    env.setenv("TELNYX_API_KEY_SECRET_ARN", arn)
    assert "scheduled for deletion" in configuration_error()


def test_fetched_values_are_validated_and_not_echoed(env, sm):
    env.setenv("DATABASE_URL_SECRET_ARN", create(sm, "koinonia/db", "mysql://app:db-pw-7f3a@db/koinonia"))
    line = configuration_error()
    assert "DATABASE_URL is invalid: expected postgresql://" in line
    assert "(the value came from the secret in DATABASE_URL_SECRET_ARN)" in line
    assert "db-pw-7f3a" not in line


def test_access_denied_by_an_iam_policy(env, sm):
    """moto evaluates the caller's IAM policy (it answers in XML with HTTP 403, not as AWS does)."""
    arn = create(sm, "koinonia/db", DB_URL)
    iam = boto3.session.Session().client("iam", region_name=REGION)
    iam.create_user(UserName="send-function")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "secretsmanager:ListSecrets", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="send-function", PolicyName="no-read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="send-function")["AccessKey"]
    env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    env.setenv("DATABASE_URL_SECRET_ARN", arn)
    with enable_iam_authentication():
        line = configuration_error()
    assert f"reading the secret {arn} (named by DATABASE_URL_SECRET_ARN) was denied" in line
    assert "grant secretsmanager:GetSecretValue on it to the function's role" in line


@pytest.fixture
def aws_answers(monkeypatch: pytest.MonkeyPatch) -> Callable[[int, dict[str, str]], None]:
    """Make every Secrets Manager request get this HTTP answer, parsed by botocore as AWS's own."""

    def answer_with(status: int, body: dict[str, str]) -> None:
        def before_send(request: Any, **_: Any) -> AWSResponse:
            raw = json.dumps(body).encode()
            headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "r-1"}
            return AWSResponse(request.url, status, headers, _Raw(raw))

        handler = ("before-send.secrets-manager", before_send)
        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [*botocore.handlers.BUILTIN_HANDLERS, handler])

    return answer_with


class _Raw:
    """The streamed body botocore reads from an HTTP response."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "AccessDeniedException", "was denied: grant secretsmanager:GetSecretValue on it"),
        (400, "DecryptionFailure", "could not be decrypted: grant kms:Decrypt"),
        (400, "UnrecognizedClientException", "AWS refused the credentials (UnrecognizedClientException)"),
        (500, "InternalServiceError", "Secrets Manager answered InternalServiceError: retry"),
    ],
)
def test_errors_as_aws_sends_them(env, aws_answers, status, code, expected):
    message = "User: arn:aws:sts::123456789012:assumed-role/send/fn is not authorized to perform this"
    aws_answers(status, {"__type": code, "Message": message})
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:koinonia/db-AbCdEf"
    env.setenv("DATABASE_URL_SECRET_ARN", arn + "#url")
    line = configuration_error()
    assert expected in line and arn in line
    assert "assumed-role" not in line  # AWS's message is not copied


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_endpoint_says_vpc_endpoint_or_nat(env):
    env.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{closed_port()}")
    env.setenv("ENCRYPTION_KEY_SECRET_ARN", "koinonia/key")
    line = configuration_error()
    assert "Secrets Manager in us-east-1 did not answer" in line
    assert "VPC endpoint" in line and "NAT gateway" in line


def test_no_region_unless_the_arn_has_one(env, sm):
    arn = create(sm, "koinonia/key", ENCRYPTION_KEY)
    env.delenv("AWS_DEFAULT_REGION")
    env.setenv("ENCRYPTION_KEY_SECRET_ARN", "koinonia/key")
    line = configuration_error()
    assert "no AWS region is configured: set AWS_REGION" in line
    env.setenv("ENCRYPTION_KEY_SECRET_ARN", arn)  # a full ARN carries its region
    assert load_settings_or_missing() == "DATABASE_URL"
    aws_secrets.clear_cache()
    env.setenv("AWS_REGION", REGION)  # what Lambda sets (botocore itself reads only AWS_DEFAULT_REGION)
    env.setenv("ENCRYPTION_KEY_SECRET_ARN", "koinonia/key")
    assert load_settings_or_missing() == "DATABASE_URL"


def load_settings_or_missing() -> str:
    """The secret was read if the next complaint is about a variable nobody set."""
    line = configuration_error()
    return line.removeprefix("configuration error: ").split(" ", 1)[0]


def test_a_local_moto_server_through_the_standard_endpoint_variable(env, fetched):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://{host}:{port}")
        client = boto3.session.Session().client("secretsmanager", region_name=REGION)
        client.create_secret(Name="koinonia/app", SecretString=json.dumps({"db": DB_URL, "key": ENCRYPTION_KEY}))
        env.setenv("DATABASE_URL_SECRET_ARN", "koinonia/app#db")
        env.setenv("ENCRYPTION_KEY_SECRET_ARN", "koinonia/app#key")
        env.setenv("REDIS_URL_SECRET_ARN", "koinonia/app#redis")
        assert "has no field 'redis'" in configuration_error()
        env.delenv("REDIS_URL_SECRET_ARN")
        env.setenv(constants.LOOKUP_KEY_ENV, LOOKUP_KEY)
        env.setenv(constants.TELNYX_API_KEY_ENV, API_KEY)
        settings = load_settings()
        assert (settings.database_url, settings.encryption_key) == (DB_URL, ENCRYPTION_KEY)
        assert fetched == ["koinonia/app"]  # the failed load's fetch was cached too
    finally:
        server.stop()


def test_the_template_can_name_every_secret_setting():
    """The names template.yaml uses are settings, and each is documented in .env.example."""
    fields = {name.upper() for name in Settings.model_fields}
    assert set(aws_secrets.SECRET_SETTINGS) <= fields
    documented = (ROOT / ".env.example").read_text()
    for name in aws_secrets.SECRET_SETTINGS:
        assert f"{name}{aws_secrets.ARN_SUFFIX}=" in documented, name


def test_a_function_whose_secret_is_missing_stops_at_start_with_one_line(tmp_path):
    """The cold start path: functions-framework imports the function, which reads its settings."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {k: v for k, v in os.environ.items() if k.upper() not in {n.upper() for n in Settings.model_fields}}
        env.update(PLAIN)
        env.update({
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://{host}:{port}",
            constants.DATABASE_URL_ENV: DB_URL, constants.LOOKUP_KEY_ENV: LOOKUP_KEY,
            constants.TELNYX_API_KEY_ENV: API_KEY, "ENCRYPTION_KEY_SECRET_ARN": "koinonia/never-created",
        })  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", "import functions_framework._cli as c; c._cli()",
             "--target=health", f"--source={ROOT / 'functions/health/main.py'}", "--port=0"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "HTTP/1.1" not in line]
    assert lines[-1].startswith(
        "configuration error: the secret named by ENCRYPTION_KEY_SECRET_ARN was not found in us-east-1: check the ARN"
    ), proc.stderr
    assert "Traceback" not in proc.stderr
