"""Start-up hygiene: the CLI's quick commands never import the heavy modules.

Each case runs in a fresh interpreter and lists which of the heavy top-level modules ended up
in `sys.modules`; timing lives in benchmarks/startup.py, never here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = (
    "anthropic",
    "datasets",
    "huggingface_hub",
    "llama_cpp",
    "numpy",
    "openai",
    "pandas",
    "pyarrow",
    "torch",
)

_PROBE = """
import json, sys
args, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["cai", *args]
if args == ["import"]:
    import cai.cli
    import cai
else:
    from cai.cli import main
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(heavy))))
"""


def _heavy_imports(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ("import",),
        ("--help",),
        ("generate", "--help"),
        ("constitution", "check", "constitutions/harmless.md"),
        ("constitution", "show", "constitutions/harmless.md"),
    ],
    ids=lambda a: " ".join(a),
)
def test_quick_commands_import_no_heavy_module(args: tuple[str, ...]) -> None:
    assert _heavy_imports(*args) == []


def test_help_does_not_import_yaml_or_the_pipeline() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['cai', '--help']\n"
            "from cai.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('yaml', 'asyncio', 'cai.pipeline', 'cai.records')"
            " if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_lazy_package_attributes_resolve() -> None:
    import cai
    from cai.pipeline import run_generation

    assert cai.run_generation is run_generation
    assert set(cai.__all__) - {"__version__"} <= set(dir(cai)) | set(cai._HOME)
    with pytest.raises(AttributeError):
        _ = cai.no_such_name
