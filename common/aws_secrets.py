"""Secret settings read from AWS Secrets Manager at start, named by ``X_SECRET_ARN``.

In the cloud a secret must not sit in the template or in the function's environment (anyone who may
read the function's configuration reads both). So the deployment sets ``X_SECRET_ARN`` instead of ``X``
for each setting in ``SECRET_SETTINGS``, and ``load_settings()`` fetches the values here, once per
process, before the usual validation. Locally nothing changes: with no ``*_SECRET_ARN`` set this module
reads nothing and never imports boto3 (a local cold start does not pay for it).

``X_SECRET_ARN`` is a secret's ARN (or partial ARN, or name) whose SecretString is the value of ``X``;
``X_SECRET_ARN=ARN#field`` takes field ``field`` of a SecretString holding a JSON object, so one secret
can carry several settings (``#`` cannot occur in a secret's name or ARN, so the split is unambiguous).
A plain value is stripped of surrounding whitespace (a value pasted or stored from a file often ends
with a newline; none of these settings may). An empty variable counts as unset, for ``X`` as for
``X_SECRET_ARN`` (a ``.env`` copied from ``.env.example`` has empty keys).

Each distinct secret id is fetched once (GetSecretValue, its AWSCURRENT version) and kept for the life
of the process: a secret rotated later reaches a function when its execution environments are replaced
(any deployment or configuration update does it). ``clear_cache()`` forgets what was fetched (tests).

The region is the one in the ARN when a full ARN is given (a secret can only be read in its own region),
else the usual AWS chain (``AWS_DEFAULT_REGION``, the config file), else ``AWS_REGION`` (which Lambda
sets). Credentials come from the usual AWS chain (the function's role in the cloud). A local moto server
is reached with botocore's own ``AWS_ENDPOINT_URL_SECRETS_MANAGER``; no variable of ours is needed.

Every failure is a ``SecretSettingError`` whose text is one line naming the variable(s) and saying what
to do; no secret value is ever put in it, and neither are AWS's own messages (they are read for nothing
and copied nowhere). botocore retries once (``total_max_attempts=2``) with short timeouts, so a function
that cannot reach Secrets Manager fails with a clear line well inside Lambda's 10 s init phase instead of
hanging until its timeout.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import dotenv_values

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = [
    "ARN_SUFFIX",
    "SECRET_SETTINGS",
    "SecretReference",
    "SecretSettingError",
    "clear_cache",
    "read_secret_settings",
    "secret_references",
]

# The settings that may come from a secret (the names template.yaml uses, with ARN_SUFFIX).
SECRET_SETTINGS: tuple[str, ...] = (
    "DATABASE_URL",
    "REDIS_URL",
    "TELNYX_API_KEY",
    "TELNYX_PUBLIC_KEY",
    "ENCRYPTION_KEY",
    "ENCRYPTION_KEYS_OLD",
    "LOOKUP_KEY",
    "OPERATOR_TOKEN",
)
ARN_SUFFIX = "_SECRET_ARN"

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 2  # botocore's total_max_attempts: the first try and one retry

_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}$")
_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")  # what Secrets Manager allows in a name
_VPC_HINT = (
    "from a private subnet the function needs a Secrets Manager VPC endpoint"
    " (com.amazonaws.REGION.secretsmanager, private DNS on) or a NAT gateway"
)

_cache: dict[str, str] = {}  # secret id -> SecretString, for the life of the process
_lock = threading.Lock()


class SecretSettingError(Exception):
    """A ``*_SECRET_ARN`` could not be turned into a value; ``str(err)`` is one line saying what to do."""


@dataclass(frozen=True, slots=True)
class SecretReference:
    """``X_SECRET_ARN`` parsed: which secret, and which JSON field of it (``None``: the whole string)."""

    variable: str  # the setting, e.g. DATABASE_URL
    secret_id: str  # an ARN, partial ARN or name
    field: str | None

    @property
    def arn_variable(self) -> str:
        return self.variable + ARN_SUFFIX


def clear_cache() -> None:
    """Forget every fetched secret: the next ``load_settings()`` fetches again (tests)."""
    with _lock:
        _cache.clear()


def secret_references(
    environ: Mapping[str, str], env_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None
) -> list[SecretReference]:
    """The ``*_SECRET_ARN`` variables set in ``environ`` or the ``.env`` file(s), parsed.

    Read as pydantic-settings reads the others: names case-insensitively, the environment over the
    file. Raises ``SecretSettingError`` when ``X`` is set beside ``X_SECRET_ARN`` (which one was meant is
    anyone's guess) or the reference is malformed."""
    from_file = _dotenv(env_file)
    from_env = {name.lower(): value for name, value in environ.items()}
    references = []
    for variable in SECRET_SETTINGS:
        arn_variable = variable + ARN_SUFFIX
        reference = (from_env.get(arn_variable.lower()) or from_file.get(arn_variable.lower()) or "").strip()
        if not reference:
            continue
        where_value = _where(variable, from_env, from_file)
        if where_value:
            where_arn = "the environment" if from_env.get(arn_variable.lower()) else "the .env file"
            raise SecretSettingError(
                f"{variable} (in {where_value}) and {arn_variable} (in {where_arn}) are both set, so which value"
                f" is meant is ambiguous: keep one (in the cloud remove {variable}; locally remove {arn_variable})"
            )
        secret_id, hash_sign, field = reference.partition("#")
        if not (_ARN.match(secret_id) or _NAME.match(secret_id)) or (hash_sign and not field):
            raise SecretSettingError(
                f"{arn_variable} is invalid: expected a secret's ARN or name, optionally followed by #FIELD"
                " (a field of the secret's JSON); the secret's value goes in the secret, not here"
            )
        references.append(SecretReference(variable, secret_id, field or None))
    return references


def read_secret_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> dict[str, str]:
    """Values of the settings named by ``*_SECRET_ARN``, keyed by field name (``database_url``).

    Empty (and boto3 never imported) when no ``*_SECRET_ARN`` is set. Each distinct secret is fetched
    once and cached for the process. Raises ``SecretSettingError``."""
    references = secret_references(os.environ if environ is None else environ, env_file)
    if not references:
        return {}
    by_secret: dict[str, list[SecretReference]] = {}
    for reference in references:
        by_secret.setdefault(reference.secret_id, []).append(reference)
    values: dict[str, str] = {}
    with _lock:
        for secret_id, users in by_secret.items():
            if secret_id not in _cache:
                _cache[secret_id] = _fetch(secret_id, users)
            for reference in users:
                values[reference.variable.lower()] = _value_of(_cache[secret_id], reference)
    return values


# Reading the references ----------------------------------------------------------------------


def _dotenv(env_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None) -> dict[str, str]:
    """The variables of the ``.env`` file(s) that exist, lower-cased names; later files win (as in pydantic-settings)."""
    if env_file is None:
        return {}
    files: Iterable[str | os.PathLike[str]] = [env_file] if isinstance(env_file, str | os.PathLike) else env_file
    merged: dict[str, str] = {}
    for file in files:
        if Path(file).expanduser().is_file():
            for name, value in dotenv_values(Path(file).expanduser(), encoding="utf-8").items():
                if value is not None:
                    merged[name.lower()] = value
    return merged


def _where(variable: str, from_env: Mapping[str, str], from_file: Mapping[str, str]) -> str | None:
    if from_env.get(variable.lower(), "").strip():
        return "the environment"
    if from_file.get(variable.lower(), "").strip():
        return "the .env file"
    return None


# Fetching ------------------------------------------------------------------------------------


def _describe(secret_id: str, arn_variables: Iterable[str]) -> str:
    """How a secret is named in an error line. Only an ARN is echoed: a mistaken variable may hold
    the secret's value instead of its name (a base64 key is a valid name), and that must not be printed."""
    names = ", ".join(arn_variables)
    return f"the secret {secret_id} (named by {names})" if _ARN.match(secret_id) else f"the secret named by {names}"


def _region_for(secret_id: str, session_region: str | None) -> str | None:
    match = _ARN.match(secret_id)
    if match:
        return match["region"]
    return session_region or os.environ.get("AWS_REGION") or None


def _fetch(secret_id: str, users: Sequence[SecretReference]) -> str:
    """The SecretString of ``secret_id``; every failure becomes a ``SecretSettingError`` naming ``users``."""
    import boto3  # here, not at the top: only a process that reads secrets pays for boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        CredentialRetrievalError,
        HTTPClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    what = _describe(secret_id, (reference.arn_variable for reference in users))
    session = boto3.session.Session()
    region = _region_for(secret_id, session.region_name)
    if not region:
        raise SecretSettingError(
            f"cannot read {what}: no AWS region is configured: set AWS_REGION (Lambda sets it) or"
            " AWS_DEFAULT_REGION, or give the secret's full ARN (its region is used)"
        )
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    )
    try:
        client: SecretsManagerClient = session.client("secretsmanager", region_name=region, config=config)
        answer = client.get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        raise SecretSettingError(_client_error_line(exc, what, region)) from None
    except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError):
        raise SecretSettingError(
            f"cannot read {what}: no usable AWS credentials: in the cloud the function's role provides them;"
            " locally set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except NoRegionError:
        raise SecretSettingError(f"cannot read {what}: no AWS region is configured: set AWS_REGION") from None
    except (BotoConnectionError, HTTPClientError):
        raise SecretSettingError(
            f"cannot read {what}: Secrets Manager in {region} did not answer (connection failed or timed out): {_VPC_HINT}"
        ) from None
    except BotoCoreError as exc:
        raise SecretSettingError(
            f"cannot read {what}: {type(exc).__name__} from botocore; retry, then check the AWS setup"
        ) from None
    secret_string = answer.get("SecretString")
    if not isinstance(secret_string, str):
        raise SecretSettingError(
            f"{what} holds binary data (SecretBinary), not text: store the value as the secret's text (SecretString)"
        )
    return secret_string


def _client_error_line(exc: ClientError, what: str, region: str) -> str:
    """One line for an answer from Secrets Manager; AWS's message is not copied (it is read for nothing)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "ResourceNotFoundException":
        return (
            f"{what} was not found in {region}: check the ARN (copy it from the Secrets Manager console or"
            " `aws secretsmanager describe-secret`) and that the secret exists in that region"
        )
    if code in ("AccessDeniedException", "AccessDenied") or status == 403:
        return (
            f"reading {what} was denied: grant secretsmanager:GetSecretValue on it to the function's role"
            " (and kms:Decrypt on its KMS key if that is a customer managed key)"
        )
    if code == "DecryptionFailure":
        return f"{what} could not be decrypted: grant kms:Decrypt on the secret's KMS key to the function's role"
    if code in ("UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException", "ExpiredTokenException"):
        return f"cannot read {what}: AWS refused the credentials ({code}): check the function's role or your AWS profile"
    if code == "InvalidRequestException":
        return (
            f"Secrets Manager refused to read {what} (InvalidRequestException: the secret is scheduled for"
            " deletion, or has no current version): restore it, or point the variable at a live secret"
        )
    answer = code or status
    return f"cannot read {what}: Secrets Manager answered {answer}: retry; if it persists, check the secret and AWS's status"


# From the secret to the value ----------------------------------------------------------------


def _value_of(secret_string: str, reference: SecretReference) -> str:
    what = _describe(reference.secret_id, [reference.arn_variable])
    if reference.field is None:
        return secret_string.strip()
    try:
        document = json.loads(secret_string)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SecretSettingError(
            f"{what} is not a JSON object, but #{reference.field} asks for one of its fields: store a JSON object"
            f" there, or drop #{reference.field} to use the whole text"
        )
    if reference.field not in document:
        fields = ", ".join(sorted(map(str, document))[:20]) or "none"
        raise SecretSettingError(
            f"{what} has no field {reference.field!r} (its fields: {fields}): add it to the secret's JSON or fix"
            f" the name after # in {reference.arn_variable}"
        )
    value = document[reference.field]
    if not isinstance(value, str):
        raise SecretSettingError(
            f"field {reference.field!r} of {what} is {type(value).__name__}, not a string: store the value as a JSON string"
        )
    return value
