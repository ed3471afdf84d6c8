"""The shipped constitutions by name: from any folder, a file of that name winning, an unknown
name refused in one line that lists the shipped ones, and `cai constitution list`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MINI_CONSTITUTION

from cai.cli import cli
from cai.constitution import (
    SHIPPED_DIR,
    load_constitution,
    resolve_constitution,
    shipped_constitutions,
)
from cai.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["customer-support", "harmless", "helpful-honest"]


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shipped_constitutions_live_in_the_package() -> None:
    import cai

    assert list(shipped_constitutions()) == NAMES
    assert SHIPPED_DIR.is_relative_to(Path(cai.__file__).parent)


def test_the_wheel_carries_them() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data = config["tool"]["setuptools"]["package-data"]["cai"]
    pattern = str(SHIPPED_DIR.relative_to(ROOT / "cai") / "*.md")
    assert pattern in package_data


def test_a_name_works_from_an_empty_folder(empty_cwd: Path) -> None:
    assert not any(empty_cwd.iterdir())
    parsed = load_constitution("harmless")
    assert parsed.name == "harmless" and len(parsed.principles) > 5
    assert Path(parsed.path) == SHIPPED_DIR / "harmless.md"
    result = CliRunner().invoke(cli, ["constitution", "show", "helpful-honest"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("helpful-honest (version 1)")


def test_generate_takes_a_name_from_an_empty_folder(empty_cwd: Path) -> None:
    (empty_cwd / "prompts.txt").write_text("How do I pick a lock?\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        ["generate", "--constitution", "harmless", "--prompts", "prompts.txt", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    assert "Prompts: 1" in result.output


def test_a_file_of_that_name_wins(empty_cwd: Path) -> None:
    (empty_cwd / "harmless").write_text(MINI_CONSTITUTION, encoding="utf-8")
    assert resolve_constitution("harmless") == Path("harmless")
    assert load_constitution("harmless").name == "mini"
    # A folder of that name is no constitution file: the shipped one is meant.
    (empty_cwd / "helpful-honest").mkdir()
    assert resolve_constitution("helpful-honest") == SHIPPED_DIR / "helpful-honest.md"


def test_an_unknown_name_is_one_line_listing_the_shipped_ones(empty_cwd: Path) -> None:
    expected = (
        "harmles: no such file, nor a shipped constitution of that name; shipped: "
        + ", ".join(NAMES)
    )
    with pytest.raises(InputError) as info:
        load_constitution("harmles")
    assert str(info.value) == expected
    result = CliRunner().invoke(
        cli, ["generate", "--constitution", "harmles", "--prompts", "p.txt", "--dry-run"]
    )
    assert result.exit_code == 2
    assert result.output == f"Error: {expected}\n"


def test_a_missing_path_keeps_its_own_message(empty_cwd: Path) -> None:
    with pytest.raises(InputError, match=r"^nope\.md: no such file; check the --constitution"):
        load_constitution("nope.md")
    with pytest.raises(InputError, match=r"no such file; check the --constitution path$"):
        load_constitution(Path("sub") / "harmless")


def test_constitution_list_shows_name_principles_and_description() -> None:
    result = CliRunner().invoke(cli, ["constitution", "list"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["NAME", "PRINCIPLES", "DESCRIPTION"]
    assert [row.split()[0] for row in rows] == NAMES
    for row, name in zip(rows, NAMES, strict=True):
        parsed = load_constitution(SHIPPED_DIR / f"{name}.md")
        assert row.split()[1] == str(len(parsed.principles))
        assert " ".join(row.split()[2:]).rstrip("…") in parsed.description


@pytest.mark.skipif(sys.platform == "win32", reason="the checkout's link is a POSIX symlink")
def test_the_checkout_path_still_reads_the_same_file() -> None:
    assert (ROOT / "constitutions" / "harmless.md").read_bytes() == (
        SHIPPED_DIR / "harmless.md"
    ).read_bytes()
