"""An enqueue wakes a cloud consumer through SQS (moto), at most once a second across senders."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from common import wake
from common.runtime import get_runtime
from tests.factories import make_church
from tests.helpers import function_client


@pytest.fixture
def wake_queue(send_env, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        wake._sqs.cache_clear()
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="koinonia-wake")["QueueUrl"]
        monkeypatch.setenv("WAKE_QUEUE_URL", url)
        get_runtime.cache_clear()
        from common.config import get_settings

        get_settings.cache_clear()
        yield sqs, url
        wake._sqs.cache_clear()


def _messages(sqs, url) -> int:
    return int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
        "ApproximateNumberOfMessages"
    ])  # fmt: skip


def test_a_send_wakes_the_cloud_consumer_once_per_second(wake_queue, pool):
    sqs, url = wake_queue
    tenant = make_church(pool)
    client = function_client("send")
    for to in ("+13125550142", "+13125550143", "+13125550144"):
        response = client.post("/messages", json={"channel": "sms", "to": to, "text": "x"}, headers=tenant.auth)
        assert response.status_code == 202
    assert _messages(sqs, url) == 1  # three sends within the gate: one wake-up
    rt = get_runtime()
    rt.redis.client.delete(rt.redis.key("wake-gate"))  # the second has passed
    assert wake.wake_consumers(rt) is True
    assert _messages(sqs, url) == 2


def test_no_wake_queue_configured_sends_nothing(send_env):
    assert wake.wake_consumers(get_runtime()) is False
