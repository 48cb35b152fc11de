"""The C and C++ library versions an ELF file needs, and those a board's libraries provide: a board
whose glibc is older than what any pushed file needs fails at load time with a loader message, so the
doctor and the deploy compare the two before anything is pushed.

Needs are the ELF version references (.gnu.version_r, what `objdump -T` shows as GLIBC_2.27);
what a library provides are its version definitions (.gnu.version_d)."""

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from pipeline.errors import PipelineError

Version = tuple[int, ...]
ELF_MAGIC = b"\x7fELF"
# GLIBC_2.27 -> ("GLIBC", "2.27"); GLIBC_PRIVATE and similar carry no number and are left out.
_VERSION_NAME = re.compile(r"^(GLIBC|GLIBCXX|CXXABI)_(\d+(?:\.\d+)*)$")


def parse_version(text: str) -> Version:
    """'2.27' -> (2, 27), so versions compare as numbers (2.3.4 < 2.27)."""
    return tuple(int(part) for part in text.split("."))


def version_text(version: Version | None) -> str:
    return "none" if version is None else ".".join(map(str, version))


@dataclass(frozen=True)
class LibraryVersions:
    """The newest version of each family: glibc (GLIBC_*), libstdc++ (GLIBCXX_*) and its ABI (CXXABI_*);
    None where the file names none."""

    glibc: Version | None = None
    glibcxx: Version | None = None
    cxxabi: Version | None = None

    def newest(self, other: "LibraryVersions") -> "LibraryVersions":
        """The newer of the two in every family: what a set of files needs together."""
        return LibraryVersions(*(_newer(a, b) for a, b in zip(self._fields(), other._fields(), strict=True)))

    def _fields(self) -> tuple[Version | None, Version | None, Version | None]:
        return self.glibc, self.glibcxx, self.cxxabi


def _newer(a: Version | None, b: Version | None) -> Version | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _newest_by_family(names: list[str]) -> LibraryVersions:
    newest: dict[str, Version] = {}
    for name in names:
        match = _VERSION_NAME.match(name)
        if match:
            family, version = match[1], parse_version(match[2])
            newest[family] = max(newest.get(family, version), version)
    return LibraryVersions(newest.get("GLIBC"), newest.get("GLIBCXX"), newest.get("CXXABI"))


def _elf(data: bytes, label: str) -> ELFFile:
    try:
        return ELFFile(io.BytesIO(data))
    except ELFError:
        raise PipelineError(f"{label} is not an ELF file", "rebuild or reinstall it (scripts/install.sh)") from None


def needed_versions(path: Path) -> LibraryVersions:
    """The newest glibc / libstdc++ versions `path` references: what the board must provide to load it."""
    return _needed(path.read_bytes(), str(path))


def _needed(data: bytes, label: str) -> LibraryVersions:
    return _versions(data, label, GNUVerNeedSection)


def provided_versions(data: bytes, label: str) -> LibraryVersions:
    """The newest versions a library (a board's libc.so.6 or libstdc++.so.6, as bytes) defines."""
    return _versions(data, label, GNUVerDefSection)


def _versions(data: bytes, label: str, kind: type[GNUVerNeedSection] | type[GNUVerDefSection]) -> LibraryVersions:
    """The newest glibc / libstdc++ version names in the ELF's version sections of `kind` (needs or definitions)."""
    elf = _elf(data, label)
    names = [
        aux.name
        for section in elf.iter_sections()
        if isinstance(section, kind)
        for _, auxes in section.iter_versions()
        for aux in auxes
    ]
    return _newest_by_family(names)


def files_needs(paths: list[Path]) -> LibraryVersions:
    """What a set of files needs together (the newest of each family)."""
    total = LibraryVersions()
    for path in paths:
        total = total.newest(needed_versions(path))
    return total


@dataclass(frozen=True)
class ArchiveVersions:
    """What the ELF files inside an archive need together, and what its own C library (if it carries one)
    defines: the pushed board Python brings Debian 12's libc, so only its other needs fall on the board."""

    needs: LibraryVersions
    own_libc: LibraryVersions | None


def archive_versions(archive: Path) -> ArchiveVersions:
    needs, own_libc = LibraryVersions(), None
    with tarfile.open(archive) as tar:
        for member in tar:
            stream = tar.extractfile(member) if member.isfile() else None
            if stream is None or stream.read(4) != ELF_MAGIC:
                continue
            data, label = ELF_MAGIC + stream.read(), f"{archive.name}:{member.name}"
            needs = needs.newest(_needed(data, label))
            if Path(member.name).name == "libc.so.6":
                own_libc = provided_versions(data, label)
    return ArchiveVersions(needs, own_libc)
