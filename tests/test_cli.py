import subprocess
import sys

from lamini_serve import __version__
from tests.conftest import run_lamini


def test_import_and_help_load_no_heavy_modules():
    code = (
        "import sys; import lamini_serve.cli as c; "
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'huggingface_hub') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_and_help():
    r = run_lamini("--version")
    assert r.returncode == 0 and __version__ in r.stdout
    r = run_lamini("--help")
    assert r.returncode == 0
    for cmd in ("chat", "teacher"):
        assert cmd in r.stdout


def _one_line_error(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_missing_folder_is_one_clear_line(tmp_path):
    line = _one_line_error(run_lamini("chat", str(tmp_path / "nope"), "-p", "hi"))
    assert "no such folder" in line


def test_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    line = _one_line_error(run_lamini("chat", str(tmp_path), "-p", "hi"))
    assert "not a checkpoint" in line and "config.json" in line


def test_hub_id_without_network_offline_mode():
    line = _one_line_error(run_lamini("chat", "no-such-org/no-such-model", "-p", "hi", env={"HF_HUB_OFFLINE": "1"}))
    assert "cannot fetch 'no-such-org/no-such-model'" in line and "HF_HUB_OFFLINE" in line


def test_hub_id_when_the_hub_is_unreachable():
    # A closed local port stands in for a network that is down.
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    line = _one_line_error(run_lamini("chat", "gpt2-does-not-exist", "-p", "hi", env=env))
    assert "cannot be reached" in line


def test_bad_sampling_option_is_a_usage_error(tiny_models):
    r = run_lamini("chat", str(tiny_models["gpt2"]), "-p", "hi", "--temperature", "-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
