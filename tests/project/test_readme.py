"""The README's settings tables are the ones generated from the settings models, and its Python runs as written."""

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


def test_the_python_blocks_run_as_written() -> None:
    # A user's copy of the Client example stopped at "SyntaxError: 'async with' outside async function".
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "no python block in README.md"
    for block in blocks:
        compile(block, "README.md", "exec")  # a SyntaxError names the line
