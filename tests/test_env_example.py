"""Every setting is documented in .env.example."""

from __future__ import annotations

import re

from common.config import Settings
from tests.helpers import ROOT


def test_every_setting_is_documented():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert {name.upper() for name in Settings.model_fields} <= documented
