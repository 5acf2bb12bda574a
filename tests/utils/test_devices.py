"""Precision "auto" picks bf16 exactly where the CPU computes it natively, read from the CPU's feature flags."""

from __future__ import annotations

import pytest

from imaginairy.utils import devices

X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw"


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        (f"processor\t: 0\nflags\t\t: {X86_FLAGS} avx512_bf16\n", True),  # Cooper Lake, Zen 4
        (f"processor\t: 0\nflags\t\t: {X86_FLAGS} amx_bf16 amx_tile\n", True),  # Sapphire Rapids
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha2 bf16 i8mm\n", True),  # Arm v8.6 (Graviton 3)
        (f"processor\t: 0\nflags\t\t: {X86_FLAGS} avx512_fp16 avx512_vnni\n", False),  # other AVX-512, not bf16
        (f"processor\t: 0\nflags\t\t: {X86_FLAGS}\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha2\n", False),
        ("processor\t: 0\nmodel name\t: bf16 in the name is not a flag\n", False),
    ],
)
def test_native_bf16_is_read_from_the_feature_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert devices.cpu_has_native_bf16(path) is native
    assert devices.resolve_precision("auto", "cpu", cpuinfo_path=path) == ("bf16" if native else "full")


def test_without_a_cpuinfo_file_bf16_is_not_assumed(tmp_path):
    assert devices.cpu_has_native_bf16(tmp_path / "missing") is False
