"""template.yaml is a valid SAM template: the real SAM transform runs offline, no credentials."""

from __future__ import annotations

import pytest
import yaml
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from tests.helpers import ROOT


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


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture
def translated(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function" and "Metadata" in resource:
            resource["Properties"]["ImageUri"] = "111111111111.dkr.ecr.us-east-1.amazonaws.com/koinonia:latest"
    output = Translator({}, Parser()).translate(
        sam_template=template, parameter_values={}, passthrough_metadata=True
    )
    return template, output


def test_template_translates_and_every_function_is_a_container_image(translated):
    template, output = translated
    functions = {k: v for k, v in output["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    assert "HealthFunction" in functions
    for logical_id, function in functions.items():
        props = function["Properties"]
        assert props["PackageType"] == "Image", logical_id
        command = props["ImageConfig"]["Command"]
        assert command[0] == "functions-framework"
        source = next(arg for arg in command if arg.startswith("--source=")).removeprefix("--source=")
        assert (ROOT / source).is_file(), f"{logical_id} points at a missing {source}"
        dockerfile = template["Resources"][logical_id]["Metadata"]["Dockerfile"]
        assert (ROOT / dockerfile).is_file()
    assert any(v["Type"] == "AWS::Lambda::Url" for v in output["Resources"].values())
