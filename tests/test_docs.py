"""Every setting is documented."""

from __future__ import annotations

from ref2video.config import Settings
from tests.live import ROOT


def test_every_setting_is_in_the_configuration_guide() -> None:
    guide = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in guide]
    assert not missing, missing
