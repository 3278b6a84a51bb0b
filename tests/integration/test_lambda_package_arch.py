"""`forwarder package --arch arm64|x86_64`: each zip carries the wheels of its architecture,
every compiled extension inside is built for that machine, and each build is reproducible."""

from __future__ import annotations

import argparse
import re
import struct
import zipfile
from pathlib import Path

import pytest

from forwarder.devtools import packaging
from forwarder.devtools.packaging import PackageReport, PackagingError, build_lambda_zip

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURES = ("arm64", "x86_64")
#: ELF header e_machine values (System V ABI): EM_X86_64 and EM_AARCH64.
ELF_MACHINE = {"x86_64": 62, "arm64": 183}
#: The machine in a CPython extension's file name (PEP 3149), and in a wheel's platform tag.
MACHINE_NAME = {"x86_64": "x86_64", "arm64": "aarch64"}
_EXTENSION_TAG = re.compile(r"\.cpython-\d+-(?P<machine>[a-z0-9_]+)-linux-gnu\.so$")


@pytest.fixture(name="zips", scope="module")
def fixture_zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PackageReport]:
    """One zip per architecture for the default Lambda runtime, built through the CLI flags."""
    out: dict[str, PackageReport] = {}
    for arch in ARCHITECTURES:
        output = tmp_path_factory.mktemp(f"dist-{arch}") / "lambda.zip"
        out[arch] = build_lambda_zip(output, source_root=ROOT, architecture=arch)
    return out


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[5] == 1, "expected a little-endian ELF"  # EI_DATA: ELFDATA2LSB
    return int(struct.unpack_from("<H", data, 18)[0])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_compiled_extension_matches_the_architecture(
    arch: str, zips: dict[str, PackageReport]
) -> None:
    """GIVEN the zip for an architecture WHEN unpacked THEN every shared object is an ELF file
    for that machine with that machine in its file name, and every wheel's platform tag is that
    machine's or pure Python."""
    report = zips[arch]
    assert report.architecture == arch
    assert f"({arch})" in report.summary()
    with zipfile.ZipFile(report.path) as archive:
        extensions = [n for n in archive.namelist() if n.endswith(".so")]
        # charset-normalizer ships mypyc-compiled extensions: the check is never vacuous.
        assert [n for n in extensions if n.startswith("charset_normalizer/")], extensions
        for name in extensions:
            match = _EXTENSION_TAG.search(name)
            assert match is not None, f"{name}: no platform tag in its name"
            assert match["machine"] == MACHINE_NAME[arch], name
            assert _elf_machine(archive.read(name)) == ELF_MACHINE[arch], name
        wheel_files = [n for n in archive.namelist() if n.endswith(".dist-info/WHEEL")]
        assert len(wheel_files) == len(packaging.RUNTIME_DISTRIBUTIONS)
        for name in wheel_files:
            tags = [
                line.split(":", 1)[1].strip()
                for line in archive.read(name).decode().splitlines()
                if line.startswith("Tag:")
            ]
            assert tags, name
            for tag in tags:
                platform_tag = tag.rsplit("-", 1)[1]
                assert platform_tag == "any" or platform_tag.endswith(MACHINE_NAME[arch]), (
                    name,
                    tag,
                )


def test_the_zips_differ_only_in_compiled_parts(zips: dict[str, PackageReport]) -> None:
    """GIVEN both zips THEN our packages and pure-Python files are byte-identical; only the
    extensions and their wheels' metadata differ."""
    contents = {}
    for arch, report in zips.items():
        with zipfile.ZipFile(report.path) as archive:
            contents[arch] = {n: archive.read(n) for n in archive.namelist()}
    arm, x86 = contents["arm64"], contents["x86_64"]
    assert arm != x86
    plain = [n for n in arm if not n.endswith(".so") and ".dist-info/" not in n]
    assert plain and all(arm[n] == x86.get(n) for n in plain)
    assert {n for n in arm if n.startswith(("forwarder/", "transforms/", "config/"))} == {
        n for n in x86 if n.startswith(("forwarder/", "transforms/", "config/"))
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_builds_reproducibly(
    arch: str, zips: dict[str, PackageReport], tmp_path: Path
) -> None:
    """GIVEN a zip WHEN the same architecture is built again THEN the bytes are the same."""
    again = build_lambda_zip(tmp_path / "again.zip", source_root=ROOT, architecture=arch)
    assert again.sha256 == zips[arch].sha256
    assert again.path.read_bytes() == zips[arch].path.read_bytes()


def test_the_arch_flag_offers_the_templates_architectures() -> None:
    """`--arch` accepts arm64 and x86_64 (default arm64, the templates' default) and refuses
    anything else as a usage error."""
    parser = argparse.ArgumentParser()
    packaging.add_arguments(parser)
    assert parser.parse_args([]).arch == "arm64"
    assert parser.parse_args(["--arch", "x86_64"]).arch == "x86_64"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--arch", "aarch64"])
    assert exit_info.value.code == 2


def test_an_unknown_architecture_is_refused_before_pip_runs(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="unknown architecture 'sparc'"):
        build_lambda_zip(tmp_path / "x.zip", source_root=ROOT, architecture="sparc")
    assert not (tmp_path / "x.zip").exists()
