"""template.yaml and infra/Dockerfile describe a deployment that works, proven offline.

The real SAM transform (aws-sam-translator) and cfn-lint run with no credentials and no network; the
assertions are on the transformed CloudFormation: every function present with its image command, routes
equal to what the code serves, schedules whose input the functions accept, alarms wired to the topic and to
metrics the code emits, each function's secrets readable by its role and no secret value inline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import lint_file
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from common.config import Settings
from common.metrics.catalog import CATALOG, NAMESPACE, Metric
from tests.helpers import ROOT, wait_for

ACCOUNT = "111111111111"
SECRET_PARAMETERS = {
    "DatabaseUrlSecretArn": "DATABASE_URL",
    "RedisUrlSecretArn": "REDIS_URL",
    "TelnyxApiKeySecretArn": "TELNYX_API_KEY",
    "EncryptionKeySecretArn": "ENCRYPTION_KEY",
    "LookupKeySecretArn": "LOOKUP_KEY",
    "OldEncryptionKeysSecretArn": "ENCRYPTION_KEYS_OLD",
    "TelnyxPublicKeySecretArn": "TELNYX_PUBLIC_KEY",
    "OperatorTokenSecretArn": "OPERATOR_TOKEN",
}
# Settings whose values are secrets: never in the template, only their *_SECRET_ARN
SECRET_SETTINGS = set(SECRET_PARAMETERS.values())
# Routes a function serves that no public route may reach: the cloud's events, the local metrics, bare POST /
PRIVATE_PATHS = {"/events", "/metrics", "/openapi.json", "/"}
EVENT_DRIVEN = {"QueueConsumeFunction", "RetrySchedulerFunction", "DeadLetterSweepFunction"}


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !If, ...) read as their long form."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        return {name: value.split(".", 1) if suffix == "GetAtt" else value}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def _load_template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)


def _parameter_values() -> dict[str, Any]:
    values: dict[str, Any] = {
        "SubnetIds": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
        "SecurityGroupId": "sg-0123456789abcdef0",
    }
    for name in SECRET_PARAMETERS:
        values[name] = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:koinonia/{name}-AbCdEf"
    values["LookupKeySecretArn"] = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:koinonia/keys-AbCdEf#LOOKUP_KEY"
    return values


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return _load_template()


@pytest.fixture(scope="module")
def translated() -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        sam = _load_template()
        for resource in sam["Resources"].values():
            if resource["Type"] == "AWS::Serverless::Function":  # what `sam build` fills in from Metadata
                resource["Properties"]["ImageUri"] = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/koinonia:latest"
        yield Translator({}, Parser()).translate(
            sam_template=sam, parameter_values=_parameter_values(), passthrough_metadata=True
        )


def _of_type(output: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in output["Resources"].items() if v["Type"] == kind}


def _variables(function: dict[str, Any]) -> dict[str, Any]:
    return function["Properties"].get("Environment", {}).get("Variables", {})


def _ref_name(value: Any) -> str | None:
    """``{"Ref": X}`` -> X; ``{"Fn::If": [cond, {"Ref": X}, NoValue]}`` -> X (the value when the condition holds)."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::If" in value:
        return _ref_name(value["Fn::If"][1])
    if isinstance(value, dict) and "Fn::Select" in value:  # the ARN of "ARN#FIELD": [0, Split("#", Ref X)]
        index, (split,) = value["Fn::Select"][0], value["Fn::Select"][1:]
        assert index == 0 and split["Fn::Split"][0] == "#", value
        return _ref_name(split["Fn::Split"][1])
    return None


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _function_dir(command: list[str]) -> tuple[str, str]:
    target = next(arg for arg in command if arg.startswith("--target=")).removeprefix("--target=")
    source = next(arg for arg in command if arg.startswith("--source=")).removeprefix("--source=")
    return target, source


# ---------------------------------------------------------------- the tools' verdicts


def test_cfn_lint_finds_nothing() -> None:
    matches = lint_file(ROOT / "template.yaml")
    assert not matches, "\n".join(str(m) for m in matches)


def test_every_function_is_the_one_image_with_its_own_command(template, translated) -> None:
    functions = _of_type(translated, "AWS::Lambda::Function")
    served = set()
    metadata = []
    for logical_id, function in functions.items():
        props = function["Properties"]
        assert props["PackageType"] == "Image", logical_id
        command = props["ImageConfig"]["Command"]
        assert command[0] == "functions-framework", logical_id
        target, source = _function_dir(command)
        text = (ROOT / source).read_text()
        assert re.search(rf"@functions_framework\.http\s+def {target}\(", text), f"{logical_id}: no {target} in {source}"
        served.add(Path(source).parent.name)
        metadata.append(template["Resources"][logical_id]["Metadata"])
    assert served == {p.name for p in (ROOT / "functions").iterdir() if (p / "main.py").is_file()}
    assert all(m == metadata[0] for m in metadata), "every function must build the same image"
    assert (ROOT / metadata[0]["Dockerfile"]).is_file() and metadata[0]["DockerContext"] == "."


def test_every_function_has_reserved_concurrency_and_runs_in_the_vpc(translated) -> None:
    for logical_id, function in _of_type(translated, "AWS::Lambda::Function").items():
        props = function["Properties"]
        assert "ReservedConcurrentExecutions" in props, f"{logical_id}: nothing bounds its database connections"
        assert props["VpcConfig"] == {"SubnetIds": {"Ref": "SubnetIds"}, "SecurityGroupIds": [{"Ref": "SecurityGroupId"}]}


# ---------------------------------------------------------------- routes: exactly what the code serves, nothing private


def _load_routes(name: str) -> set[tuple[str, str]]:
    path = ROOT / "functions" / name / "main.py"
    spec = importlib.util.spec_from_file_location(f"template_test_{name.replace('-', '_')}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    routes = module.ROUTES
    if isinstance(routes, dict):  # health: path -> report, GET only
        return {("GET", path) for path in routes}
    found = set()
    for r in routes:
        path = r.pattern.pattern.removeprefix("^").removesuffix("/?$")
        found.add((r.method, re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", path) or "/"))
    return found


def _public_routes(translated: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    """Function directory -> (method, path) of the HTTP API routes that reach it, read from the API's body."""
    (api,) = _of_type(translated, "AWS::ApiGatewayV2::Api").values()
    functions = _of_type(translated, "AWS::Lambda::Function")
    by_function: dict[str, set[tuple[str, str]]] = {}
    for path, methods in api["Properties"]["Body"]["paths"].items():
        for method, operation in methods.items():
            uri = json.dumps(operation["x-amazon-apigateway-integration"]["uri"])
            (logical_id,) = [lid for lid in functions if f'"{lid}.Arn"' in uri or f"${{{lid}.Arn}}" in uri]
            _, source = _function_dir(functions[logical_id]["Properties"]["ImageConfig"]["Command"])
            by_function.setdefault(Path(source).parent.name, set()).add((method.upper(), path))
    return by_function


def test_public_routes_are_exactly_the_code_routes_less_the_private_ones(env, translated) -> None:
    public = _public_routes(translated)
    for name in ("send", "dlq-drain", "health", "webhooks"):
        # /alive: every function's readiness path for the adapter; public only as the health function's
        private = PRIVATE_PATHS if name == "health" else PRIVATE_PATHS | {"/alive"}
        served = {(m, p) for m, p in _load_routes(name) if p not in private}
        assert public.get(name) == served, f"{name}: template routes differ from the code's"
    assert set(public) == {"send", "dlq-drain", "health", "webhooks"}, "queue-consume and retry-scheduler stay private"
    every_path = {p for routes in public.values() for _, p in routes}
    assert not every_path & PRIVATE_PATHS
    assert not any("proxy+" in p or p == "$default" for p in every_path), "no catch-all route"


# ---------------------------------------------------------------- triggers


def _schedules(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Function logical id -> its AWS::Scheduler::Schedule properties."""
    return {
        schedule["Properties"]["Target"]["Arn"]["Fn::GetAtt"][0]: schedule["Properties"]
        for schedule in _of_type(translated, "AWS::Scheduler::Schedule").values()
    }


def test_schedules_carry_input_the_functions_accept(translated) -> None:
    from common.consume import ConsumeEvent
    from common.dead_letters.api import TickEvent
    from common.request_models import parse_model
    from common.scheduler import SchedulerEvent

    schedules = _schedules(translated)
    assert set(schedules) == {"QueueConsumeFunction", "RetrySchedulerFunction", "DeadLetterSweepFunction"}
    models = {
        "QueueConsumeFunction": ConsumeEvent,
        "RetrySchedulerFunction": SchedulerEvent,
        "DeadLetterSweepFunction": TickEvent,
    }
    timeouts = {k: v["Properties"]["Timeout"] for k, v in _of_type(translated, "AWS::Lambda::Function").items()}
    for owner, props in schedules.items():
        payload = json.loads(props["Target"]["Input"])
        parsed = parse_model(models[owner], payload)  # a 4xx ApiError here would fail the test
        budget = getattr(parsed, "max_seconds", None) or getattr(parsed, "budget_s", None)
        if budget is not None:
            assert budget < timeouts[owner], f"{owner}: its budget must end before Lambda's timeout"
        assert props["ScheduleExpression"].startswith("rate(")
    assert schedules["QueueConsumeFunction"]["ScheduleExpression"] == "rate(1 minute)"
    assert schedules["RetrySchedulerFunction"]["ScheduleExpression"] == "rate(1 minute)"


def test_queue_consume_is_woken_by_the_queue_send_wakes(translated) -> None:
    functions = _of_type(translated, "AWS::Lambda::Function")
    (mapping,) = _of_type(translated, "AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert props["FunctionName"] == {"Ref": "QueueConsumeFunction"}
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["WakeQueue", "Arn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    for waker in ("SendFunction", "RetrySchedulerFunction", "DlqDrainFunction"):
        assert _variables(functions[waker])["WAKE_QUEUE_URL"] == {"Ref": "WakeQueue"}, waker


def test_only_event_driven_functions_turn_5xx_into_failed_invocations(translated) -> None:
    """A failed drain or sweep must fail its invocation (so SQS or the scheduler retries it); an HTTP function
    must keep its own status codes (a 503 with Retry-After, not the API's bare 502)."""
    for logical_id, function in _of_type(translated, "AWS::Lambda::Function").items():
        codes = _variables(function).get("AWS_LWA_ERROR_STATUS_CODES")
        if logical_id in EVENT_DRIVEN:
            assert codes == "500-599", logical_id
        else:
            assert codes is None, logical_id


# ---------------------------------------------------------------- configuration and secrets


def _required_settings() -> set[str]:
    return {name.upper() for name, field in Settings.model_fields.items() if field.is_required()}


def test_every_function_gets_every_required_setting_and_secrets_only_by_arn(translated) -> None:
    for logical_id, function in _of_type(translated, "AWS::Lambda::Function").items():
        variables = _variables(function)
        provided = {n.removesuffix("_SECRET_ARN") for n in variables}
        missing = _required_settings() - provided
        assert not missing, f"{logical_id} would not start: {sorted(missing)} unset"
        assert not SECRET_SETTINGS & set(variables), f"{logical_id}: a secret value in its environment"
        for name, value in variables.items():
            if name.endswith("_SECRET_ARN"):
                assert SECRET_PARAMETERS[_ref_name(value)] == name.removesuffix("_SECRET_ARN"), name


def test_secret_parameters_take_full_arns_with_an_optional_field(template) -> None:
    parameters = template["Parameters"]
    good = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:koinonia/db-AbCdEf"
    for name in SECRET_PARAMETERS:
        pattern = re.compile(parameters[name]["AllowedPattern"])
        assert pattern.fullmatch(good) and pattern.fullmatch(good + "#DATABASE_URL"), name
        assert not pattern.fullmatch(good.removesuffix("-AbCdEf")), f"{name}: a partial ARN matches no IAM resource"
        assert not pattern.fullmatch("postgresql://u:p@h/db"), name


def test_no_secret_value_or_dynamic_reference_is_inline(translated) -> None:
    assert "{{resolve:" not in (ROOT / "template.yaml").read_text(), "a dynamic reference puts the secret in the configuration"
    for value in _values_but_descriptions(translated["Resources"]):
        assert not re.search(r"(postgres(ql)?|rediss?)://[^\s/]*@", value), "a URL with credentials is inline"
        assert not re.fullmatch(r"[A-Za-z0-9+/]{43}=|KEY[0-9A-Za-z_]{16,}", value), "something like a key is inline"


def _values_but_descriptions(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in ("Description", "AlarmDescription"):
                yield from _values_but_descriptions(item)
    elif isinstance(value, list):
        for item in value:
            yield from _values_but_descriptions(item)
    elif isinstance(value, str):
        yield value


def _role_of(translated: dict[str, Any], logical_id: str) -> dict[str, Any]:
    function = translated["Resources"][logical_id]
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    return translated["Resources"][role_id]["Properties"]


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in _walk(role.get("Policies", [])) if isinstance(item, dict) and "Effect" in item and "Action" in item]


def test_each_role_reads_exactly_the_secrets_its_function_names(translated) -> None:
    for logical_id, function in _of_type(translated, "AWS::Lambda::Function").items():
        named = {_ref_name(v) for n, v in _variables(function).items() if n.endswith("_SECRET_ARN")}
        readable = set()
        for statement in _statements(_role_of(translated, logical_id)):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if "secretsmanager:GetSecretValue" in actions:
                arn = statement["Resource"]["Fn::Sub"][1]["secretArn"]
                assert "Fn::Select" in arn, f"{logical_id}: an ARN#FIELD parameter would grant nothing"
                readable.add(_ref_name(arn))
        assert named == readable, f"{logical_id}: reads {sorted(readable)}, needs {sorted(named)}"


def test_roles_are_least_privilege(translated) -> None:
    allowed_managed = {
        "service-role/AWSLambdaBasicExecutionRole",
        "service-role/AWSLambdaVPCAccessExecutionRole",
        "service-role/AWSLambdaSQSQueueExecutionRole",  # SAM's own, for the wake-up event source only
    }
    for logical_id in _of_type(translated, "AWS::Lambda::Function"):
        role = _role_of(translated, logical_id)
        managed = {json.dumps(arn).split(":policy/")[-1].rstrip('"') for arn in role.get("ManagedPolicyArns", [])}
        assert managed <= allowed_managed, f"{logical_id}: {managed - allowed_managed}"
        if "service-role/AWSLambdaSQSQueueExecutionRole" in managed:
            assert logical_id == "QueueConsumeFunction"
        for statement in _statements(role):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not any(a == "*" or a.endswith(":*") for a in actions), f"{logical_id}: {actions}"
            assert statement["Resource"] != "*", f"{logical_id}: {actions} on every resource"
    mail_statements = [s for s in _statements(_role_of(translated, "QueueConsumeFunction")) if "ses:SendEmail" in s["Action"]]
    assert mail_statements and all("identity/" in json.dumps(s["Resource"]) for s in mail_statements)
    for logical_id in set(_of_type(translated, "AWS::Lambda::Function")) - {"QueueConsumeFunction"}:
        assert not any("ses:" in json.dumps(s["Action"]) for s in _statements(_role_of(translated, logical_id)))


# ---------------------------------------------------------------- alarms


def test_alarms_watch_dead_letters_queue_age_and_error_rates(translated) -> None:
    alarms = _of_type(translated, "AWS::CloudWatch::Alarm")
    for logical_id, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical_id
    own = {
        a["Properties"]["MetricName"]: a["Properties"] for a in alarms.values() if a["Properties"].get("Namespace") == NAMESPACE
    }
    assert set(own) == {Metric.dead, Metric.dead_letter_backlog, Metric.queue_age}, "alarms on metrics the code emits"
    for name, props in own.items():
        assert props["Dimensions"] == [{"Name": "Stage", "Value": {"Ref": "Stage"}}], "the EMF dimension set is [[Stage]]"
        assert props["Statistic"] == ("Sum" if CATALOG[Metric(name)].kind == "counter" else "Maximum"), name
    assert own["QueueAgeSeconds"]["TreatMissingData"] == "breaching", "a silent scheduler must alarm"
    watched = set()
    for alarm in alarms.values():
        for metric in alarm["Properties"].get("Metrics", []):
            stat = metric.get("MetricStat", {}).get("Metric", {})
            if stat.get("MetricName") == "Errors":
                watched.add(stat["Dimensions"][0]["Value"]["Ref"])
        if alarm["Properties"].get("MetricName") == "Errors":
            watched.add(alarm["Properties"]["Dimensions"][0]["Value"]["Ref"])
    assert watched >= {f"{n}Function" for n in ("Send", "QueueConsume", "RetryScheduler", "Webhooks", "DeadLetterSweep")}
    assert any(
        m.get("MetricStat", {}).get("Metric", {}).get("MetricName") == "5xx"
        for a in alarms.values()
        for m in a["Properties"].get("Metrics", [])
    ), "the HTTP API's 5xx rate is watched"


# ---------------------------------------------------------------- the image


def _dockerfile() -> str:
    return (ROOT / "infra" / "Dockerfile").read_text()


def test_the_image_pins_the_lambda_web_adapter_and_the_tested_python() -> None:
    text = _dockerfile()
    adapter = re.search(r"COPY --from=public\.ecr\.aws/awsguru/aws-lambda-adapter:(\S+) /lambda-adapter /opt/extensions/", text)
    assert adapter and re.fullmatch(r"\d+\.\d+\.\d+", adapter.group(1)), "pin the adapter to a release"
    base = re.search(r"python:(\d+\.\d+)-slim", text)
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert base and required == f">={base.group(1)}", "the image runs the Python the suite is required on"
    assert f"{sys.version_info.major}.{sys.version_info.minor}" >= base.group(1)
    assert re.search(r"^USER \d+", text, re.M), "not root on container platforms"


def test_readiness_and_event_paths_agree_between_image_and_template(template) -> None:
    text = _dockerfile()
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in ("AWS_LWA_READINESS_CHECK_PATH", "AWS_LWA_PASS_THROUGH_PATH", "PORT", "AWS_LWA_PORT"):
        assert re.search(rf"\b{name}={re.escape(str(variables[name]))}\b", text), name
    assert variables["AWS_LWA_PASS_THROUGH_PATH"] == "/events"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _literal_variables(template: dict[str, Any], logical_id: str) -> dict[str, str]:
    """The environment the template gives a function, less what CloudFormation resolves (refs, secrets' ARNs)."""
    merged = {**template["Globals"]["Function"]["Environment"]["Variables"]}
    merged.update(template["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {}))
    return {k: str(v) for k, v in merged.items() if isinstance(v, str | int | float) and not k.endswith("_SECRET_ARN")}


def test_every_image_command_starts_and_answers_the_readiness_path(env, translated, template) -> None:
    """What the adapter does at a cold start, for each function: run its ImageConfig.Command from the image's
    working directory with the template's environment (secrets given directly, as Secrets Manager would) and
    poll AWS_LWA_READINESS_CHECK_PATH until it answers 200."""
    readiness = template["Globals"]["Function"]["Environment"]["Variables"]["AWS_LWA_READINESS_CHECK_PATH"]
    bin_dir = Path(sys.executable).parent
    started: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for logical_id, function in _of_type(translated, "AWS::Lambda::Function").items():
            port = _free_port()
            child_env = {**os.environ, **_literal_variables(template, logical_id), "PORT": str(port), "STAGE": "test"}
            command = function["Properties"]["ImageConfig"]["Command"]
            process = subprocess.Popen(
                [str(bin_dir / command[0]), *command[1:]], cwd=ROOT, env=child_env,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            started[logical_id] = (process, port)

        def ready(logical_id: str) -> bool:
            process, port = started[logical_id]
            assert process.poll() is None, f"{logical_id} exited: {process.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(f"GET {readiness} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                    return sock.recv(64).startswith(b"HTTP/1.0 200") or False
            except OSError:
                return False

        for logical_id in started:
            wait_for(lambda lid=logical_id: ready(lid), timeout_s=60, what=f"{logical_id} ready on {readiness}", poll_s=0.1)
    finally:
        for process, _ in started.values():
            process.terminate()
        for process, _ in started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
