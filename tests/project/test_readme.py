"""The README's settings tables are the ones generated from the settings models."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import Settings
from node.gateway.settings import GatewaySettings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("marker", "generate"), [("settings-table", Settings.table), ("gateway-settings-table", GatewaySettings.table)]
)
def test_settings_table_matches_the_settings_model(marker: str, generate: Callable[[], str]) -> None:
    text = README.read_text()
    match = re.search(rf"<!-- {marker}[^>]*-->\n\| key[^\n]*\n\|---[^\n]*\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert match, f"{marker} markers missing from README.md"
    assert match.group(1) == generate(), f"regenerate the README table from {generate.__qualname__}()"
