"""Read the machine type of an ELF file, so a library for the wrong architecture never reaches a board."""

from pathlib import Path

from pipeline.errors import PipelineError

_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "x86"}


def elf_arch(path: Path) -> str:
    """The architecture named in the ELF header (e_machine), e.g. 'aarch64' or 'x86_64'."""
    header = path.read_bytes()[:20] if path.is_file() else b""
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise PipelineError(f"{path} is not an ELF shared library", "rebuild it with invoke build")
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return _MACHINES.get(machine, f"unknown-machine-{machine}")
