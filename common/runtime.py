"""The process-wide objects a function needs, built once from settings (cold start), reused per request."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.carrier import TelnyxClient
from common.config import Settings, get_settings
from common.db import get_pool
from common.db.pool import Pool
from common.queue import MessageQueue, QueueConfig
from common.redis_client import RedisGate, get_redis

if TYPE_CHECKING:
    from common.delivery import MailCourier


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    pool: Pool
    redis: RedisGate
    queue: MessageQueue

    def queue_config(self) -> QueueConfig:
        return queue_config(self.settings)

    def carrier(self, max_connections: int) -> TelnyxClient:
        """A carrier client for one event loop (clients hold connections bound to their loop)."""
        return TelnyxClient(
            self.settings.telnyx_base_url,
            self.settings.telnyx_api_key,
            max_connections=max_connections,
            webhook_url=self.settings.telnyx_webhook_url,
        )

    def mail(self, max_concurrency: int = 32) -> MailCourier:
        """The SES side for one event loop (its mailer is made at the first mail: boto3 only when needed)."""
        from common.delivery import MailCourier

        return MailCourier.from_settings(self.settings, max_concurrency=max_concurrency)


def queue_config(settings: Settings) -> QueueConfig:
    return QueueConfig(
        account_sms_per_s=settings.account_sms_per_second,
        account_mms_per_s=settings.account_mms_per_second,
        # SES's maximum send rate is the account's: mail's account bucket, and the From address's (common/send/service.py)
        account_mail_per_s=settings.ses_max_send_rate,
    )


@functools.cache
def get_runtime() -> Runtime:
    settings = get_settings()
    gate = get_redis()
    return Runtime(
        settings=settings,
        pool=get_pool(),
        redis=gate,
        queue=MessageQueue(gate.client, gate.prefix, queue_config(settings)),
    )
