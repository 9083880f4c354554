"""What a user sees when a run fails under `accelerate launch`, run as the README writes it."""

import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT


def readme_command() -> list[str]:
    """The README's first training command ("One training run"), as a list of arguments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## One training run"):]
    line = next(line for line in section.splitlines() if line.startswith("accelerate launch"))
    return shlex.split(line.split("  #")[0])


@pytest.mark.slow  # two Python processes importing torch and transformers: 10-40 s
def test_a_gbk_file_under_accelerate_launch_as_the_readme_writes_it_ends_on_the_clear_error(tmp_path):
    command = readme_command()
    assert command[:3] == ["accelerate", "launch", "-q"] and "afqmc/train.py" in command
    gbk = tmp_path / "pairs.jsonl"
    gbk.write_bytes('{"text1": "花呗怎么还款", "text2": "花呗如何还钱", "label": 1}\n'.encode("gbk"))
    # `accelerate launch` is this interpreter's accelerate.commands.launch (the console script's module)
    argv = [sys.executable, "-m", "accelerate.commands.launch", *command[2:], "--train_file", str(gbk),
            "--output_dir", str(tmp_path / "run")]
    run = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 1  # -q: the launcher's own exit status for a failed script
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    # The last two lines: the project's one-line error (file, line, what to do), then the pointer to it.
    assert re.match(rf"error: {re.escape(str(gbk))}:1: not UTF-8 .*--encoding gb18030\)$", lines[-2]), lines[-4:]
    assert lines[-1].startswith("(the error above stopped the run; a traceback that `accelerate launch`")
    assert "Traceback" not in run.stderr and "CalledProcessError" not in run.stderr
    assert run.stderr.count("error: ") == 1
