"""The README's settings table is the one generated from the Settings model."""

import re
from pathlib import Path

from config.settings import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_settings_table_matches_the_settings_model() -> None:
    text = README.read_text()
    match = re.search(r"<!-- settings-table[^>]*-->\n\| key[^\n]*\n\|---[^\n]*\n(.*?)\n<!-- /settings-table -->", text, re.S)
    assert match, "settings table markers missing from README.md"
    assert match.group(1) == settings_table(), "regenerate the README table with config.settings.settings_table()"
