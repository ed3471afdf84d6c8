"""The bundled model loads so that it runs on the CPU it finds (issue: "Illegal instruction").

Some cloud VMs advertise AMX but trap on the first tile instruction; a native llama.cpp build
then dies with SIGILL on the first token when its extra buffer types (which hold AMX-repacked
weights) are on. These tests pin the choice made from the CPU flags and check that it reaches
llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.errors import ConfigError
from cai.providers.local import (
    EXTRA_BUFFERS_ENV,
    LocalProvider,
    bundled_model_path,
    cpu_flags,
    llama_load_params,
    load_llama,
    use_extra_buffers,
)

SAPPHIRE_RAPIDS = frozenset(
    ["fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"]
)
EPYC = frozenset(["fpu", "sse2", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni"])


def test_amx_cpu_loads_without_extra_buffers() -> None:
    assert use_extra_buffers(SAPPHIRE_RAPIDS, environ={}) is False
    assert use_extra_buffers(frozenset({"avx2", "amx_tile"}), environ={}) is False


def test_cpu_without_amx_keeps_extra_buffers() -> None:
    assert use_extra_buffers(EPYC, environ={}) is True
    # No readable flags (macOS, Windows, a container without /proc): llama.cpp's default.
    assert use_extra_buffers(frozenset(), environ={}) is True


@pytest.mark.parametrize(
    ("value", "flags", "expected"),
    [
        ("1", SAPPHIRE_RAPIDS, True),
        ("on", SAPPHIRE_RAPIDS, True),
        ("0", EPYC, False),
        ("false", EPYC, False),
        ("auto", SAPPHIRE_RAPIDS, False),
        ("", EPYC, True),
    ],
)
def test_environment_overrides_the_choice(
    value: str, flags: frozenset[str], expected: bool
) -> None:
    assert use_extra_buffers(flags, environ={EXTRA_BUFFERS_ENV: value}) is expected


def test_bad_environment_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=EXTRA_BUFFERS_ENV):
        use_extra_buffers(EPYC, environ={EXTRA_BUFFERS_ENV: "maybe"})


def test_cpu_flags_reads_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480C\n"
        "flags\t\t: fpu avx2 amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\n"
        "flags\t\t: fpu avx2 amx_bf16 amx_tile amx_int8\n",
        encoding="utf-8",
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16", "amx_tile", "amx_int8"}
    assert use_extra_buffers(cpu_flags(cpuinfo), environ={}) is False
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_this_machine_is_decided_by_its_own_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXTRA_BUFFERS_ENV, raising=False)
    advertises_amx = bool(cpu_flags() & {"amx_tile", "amx_int8", "amx_bf16"})
    assert use_extra_buffers() is not advertises_amx


def test_provider_takes_the_setting_from_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    monkeypatch.setattr("cai.providers.local.cpu_flags", lambda: SAPPHIRE_RAPIDS)
    monkeypatch.delenv(EXTRA_BUFFERS_ENV, raising=False)
    assert LocalProvider().extra_buffers is False
    monkeypatch.setattr("cai.providers.local.cpu_flags", lambda: EPYC)
    assert LocalProvider().extra_buffers is True


@pytest.mark.parametrize("extra_buffers", [False, True])
def test_setting_reaches_llama_cpp(extra_buffers: bool) -> None:
    """llama.cpp receives the setting in its model parameters, and only while loading."""
    native = pytest.importorskip("llama_cpp.llama_cpp")
    llama = load_llama(
        bundled_model_path(), extra_buffers=extra_buffers, n_ctx=256, n_threads=1, verbose=False
    )
    try:
        assert bool(llama.model_params.use_extra_bufts) is extra_buffers
    finally:
        llama.close()
    # The defaults are restored: nothing else in the process is affected.
    assert bool(native.llama_model_default_params().use_extra_bufts) is True


def test_load_params_are_restored_after_an_error() -> None:
    native = pytest.importorskip("llama_cpp.llama_cpp")
    with pytest.raises(RuntimeError), llama_load_params(False):
        assert native.llama_model_default_params().use_extra_bufts is False
        raise RuntimeError("load failed")
    assert bool(native.llama_model_default_params().use_extra_bufts) is True
