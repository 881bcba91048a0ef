"""The README opens with the two set-up commands and its configuration table matches the code."""

from __future__ import annotations

from scripts.config_table import updated_readme
from scripts.stack import ROOT


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]]
    commands = [c for c in commands if c]
    assert commands == ["make run", "make test"]


def test_config_table_is_generated_from_the_settings() -> None:
    text = (ROOT / "README.md").read_text()
    assert updated_readme(text) == text, "run `python -m scripts.config_table`"
