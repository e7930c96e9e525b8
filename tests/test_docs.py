"""The docs stay true: the command reference is every command's current --help, and each stage
has its page."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import lamini_root

ROOT = lamini_root()


def test_the_command_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_the_reference_check_fails_when_a_help_changes(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import cli_reference
    finally:
        sys.path.pop(0)
    page = tmp_path / "cli.md"
    page.write_text(cli_reference.render().replace("Where everything goes", "Where things go"), encoding="utf-8")
    monkeypatch.setattr(cli_reference, "PAGE", page)
    monkeypatch.setattr(sys, "argv", ["cli_reference.py", "--check"])
    assert cli_reference.main() == 1


def test_every_stage_has_a_page_and_the_readme_links_resolve():
    for stage in ("data", "train", "export", "serve", "ui", "eval", "architecture", "troubleshooting", "cli"):
        assert (ROOT / "docs" / f"{stage}.md").is_file(), stage
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
