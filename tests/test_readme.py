"""The README's code blocks run as written: its Python blocks are executed, its commands exist.

The Python blocks run in a fresh interpreter in a temporary directory whose ``models/`` links to the
repository's converted models, as a user would run them from the repository root after the test command.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MODELS = ROOT / "models"


def blocks(language: str) -> list[str]:
    """The bodies of the README's fenced blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.DOTALL | re.MULTILINE)


def commands() -> list[list[str]]:
    """Every command of the README's bash blocks (split at ``&&``), as argument lists."""
    return [shlex.split(part) for block in blocks("bash") for line in block.splitlines() if line.strip()
            for part in line.split("&&")]


def optional_dependencies() -> set[str]:
    """The extras pyproject.toml declares (read as text: tomllib is 3.11+, the project supports 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_-]+) = \[", table, flags=re.MULTILINE))


def test_readme_has_the_blocks_this_test_checks() -> None:
    assert len(blocks("python")) >= 1
    assert len(blocks("bash")) == 2  # the two commands


def test_python_blocks_run_as_written(tmp_path: Path) -> None:
    needed = ("all-MiniLM-L6-v2", "smollm2-135m-instruct", "whisper-tiny.en", "dinov2-small")
    missing = [name for name in needed if not (MODELS / name / "weights.parquet").is_file()]
    if missing:
        pytest.fail(f"models/ lacks {missing}; the README's test command converts them (scripts/fetch_models.py)")
    (tmp_path / "models").mkdir()
    for name in needed:
        (tmp_path / "models" / name).symlink_to(MODELS / name)
    # the caller's environment as is (ARROWENGINE_RUNTIME_CACHE_DIR may say where the packages were fetched),
    # but the relative models/ of the README must be the temporary directory's
    env = {k: v for k, v in os.environ.items() if k != "ARROWENGINE_MODELS_DIR"} | {"HF_HUB_OFFLINE": "1"}
    for number, code in enumerate(blocks("python")):
        script = tmp_path / f"readme_block_{number}.py"
        script.write_text(code, encoding="utf-8")
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, f"README python block {number} failed:\n{result.stderr[-3000:]}"


def test_bash_commands_exist() -> None:
    extras = optional_dependencies()
    for argv in commands():
        if argv[:2] == ["pip", "install"]:
            for target in argv[2:]:
                if target.startswith("-e") or target.startswith("."):
                    continue
                name = re.split(r"[=<>\[]", target)[0]
                assert name == "torch", f"README installs {target!r}; expected torch or the project itself"
            for wanted in re.findall(r"\.\[([^\]]+)\]", " ".join(argv)):
                for extra in wanted.split(","):
                    assert extra in extras, f"README installs the extra {extra!r}, not in pyproject.toml"
        elif argv[:2] == ["python", "-m"]:
            import importlib.util

            assert importlib.util.find_spec(argv[2]) is not None, f"README runs python -m {argv[2]}: not installed"
        elif argv[0] == "python":
            assert (ROOT / argv[1]).is_file(), f"README runs {argv[1]}, which does not exist"
        else:
            pytest.fail(f"README command {argv} is not checked by this test")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = blocks("bash")[1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()


@pytest.mark.parametrize("script", ["scripts/quickstart.py", "scripts/fetch_models.py"])
def test_readme_scripts_answer_help(script: str) -> None:
    import runpy

    main = runpy.run_path(str(ROOT / script), run_name="readme_check")["main"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert out.getvalue().startswith("usage:")


def test_every_cli_verb_the_readme_names_exists() -> None:
    from arrowengine.cli import main

    verbs = sorted(set(re.findall(r"`(?:python -m )?arrowengine ([a-z]+)", README)))
    assert {"convert", "fetch", "info", "quantize", "serve", "verify"} <= set(verbs)
    for verb in verbs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0, f"arrowengine {verb} --help exited {info.value.code}"
        assert out.getvalue().startswith("usage:"), verb


def test_readme_links_point_inside_the_repository() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).resolve().is_relative_to(ROOT), f"README links outside the repo: {target}"
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    assert "../shared" not in README
