"""The operator documentation keeps up with the code: every setting and flag is described, and
every relative link in README.md and docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from geoservice.cli import main
from geoservice.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_configuration_describes_every_variable_and_flag(capsys: pytest.CaptureFixture[str]):
    text = CONFIGURATION.read_text()
    missing = [name for name in ENV_VARS if f"`{name}`" not in text]
    assert missing == []
    for command in (["serve"], ["zones", "import"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", capsys.readouterr().out)) - {"--help"}
        assert flags
        assert [flag for flag in sorted(flags) if flag not in text] == []


def test_relative_links_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    # loadtest/RESULTS.md is written by whoever runs the benchmarks; until then it may be absent.
    assert [b for b in broken if not b.endswith("loadtest/RESULTS.md")] == []
