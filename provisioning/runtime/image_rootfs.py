"""The worker image's root filesystem: this machine's Python, cut down to what the worker uses.

No registry is reachable, so the image cannot start FROM a Python image: its files come from
the interpreter prewarm runs on (symlinks resolved), each at the absolute path it has here,
so the interpreter finds its standard library by the usual landmark (`lib/python3.X/os.py`
beside its `bin/`) with no PYTHONHOME (which `-I` would ignore anyway):

- the interpreter, and the shared libraries it and its extension modules load, the dynamic
  loader included, at the paths `ldd` names (where the loader looks for them);
- exactly the standard modules the worker imports: found by importing the worker package
  in a subprocess of that interpreter with `-I -S` and an empty environment, as a member
  starts, and listing `sys.modules`. A few optional imports (`ssl`, `bz2`, `lzma`, tried by
  http.client and shutil) are refused there, so they and their libraries stay out. Each
  module's compiled `.pyc` goes with it and its source keeps its mtime, which that `.pyc`
  was compiled against: a read-only root cannot cache, so a mismatch would recompile at
  every start;
- the worker package (`provisioning/runtime/worker/`) at WORKER_DIR, and an empty /tmp.

ELF files lose their debug information (`strip --strip-debug`, GNU binutils) when `strip` is
installed: pyenv's libpython carries ~17 MB of it. The tar is deterministic: the same files
give the same bytes, so its digest tells when the image must be rebuilt.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provisioning.runtime.base import ImageBuildError

WORKER_PACKAGE = Path(__file__).with_name("worker")
WORKER_DIR = "/opt/prewarm/worker"  # where the image holds the worker package
LEFT_OUT = ("ssl", "_ssl", "bz2", "_bz2", "lzma", "_lzma")
_ELF = b"\x7fELF"

# Run by the interpreter going into the image the way a member starts (a directory's
# __main__.py: that takes runpy and importlib), import the worker, refusing LEFT_OUT, then
# print where the standard library is and every module file loaded.
_LIST_MODULES = """
import json, os, sys
left_out = set(sys.argv[2].split(","))
class LeaveOut:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in left_out:
            raise ModuleNotFoundError(f"{name} is left out of the worker image", name=name)
sys.meta_path.insert(0, LeaveOut)
sys.path.append(sys.argv[1])
import worker.serve
loaded = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
import importlib.util
compiled = {f: importlib.util.cache_from_source(f) for f in loaded if f.endswith(".py")}
print(json.dumps({"stdlib": os.path.dirname(os.__file__), "loaded": loaded, "pyc": compiled}))
"""


@dataclass(frozen=True)
class WorkerRootfs:
    """The image's root filesystem as a tar, and the command that starts the worker."""

    tar: bytes
    command: list[str]


@functools.lru_cache(maxsize=4)
def worker_rootfs(python: Path) -> WorkerRootfs:
    """The rootfs around `python` (built once per process: a fleet imports it per engine)."""
    interpreter = python.resolve()
    if not interpreter.is_file():
        raise ImageBuildError(f"no Python interpreter at {python}")
    modules = _standard_modules(interpreter)
    binaries = [interpreter, *(module for module in modules if module.suffix == ".so")]
    # Path in the image -> (the file here, the mtime it keeps).
    files: dict[str, tuple[Path, int]] = {str(path): (path, 0) for path in binaries}
    files.update({path: (source, 0) for path, source in _shared_libraries(binaries).items()})
    for module in modules:
        # A source keeps its mtime: its .pyc beside it was compiled against that mtime.
        keep = int(module.stat().st_mtime) if module.suffix == ".py" else 0
        files[str(module)] = (module, keep)
    for path in sorted(WORKER_PACKAGE.glob("*.py")):
        files[f"{WORKER_DIR}/{path.name}"] = (path, 0)
    command = [str(interpreter), "-I", "-S", WORKER_DIR, "--host", "0.0.0.0", "--data-dir", "/tmp"]
    return WorkerRootfs(_tar(files), command)


def _standard_modules(interpreter: Path) -> list[Path]:
    """The files of the standard modules the worker loads, their compiled .pyc included."""
    arguments = [str(WORKER_PACKAGE.parent), ",".join(LEFT_OUT)]
    try:
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "__main__.py").write_text(_LIST_MODULES)
            listing = subprocess.run(
                [str(interpreter), "-I", "-S", scratch, *arguments],
                env={},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
    except subprocess.CalledProcessError as error:
        raise ImageBuildError(
            f"{interpreter} could not import the worker:\n{error.stderr.strip()}"
        ) from error
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ImageBuildError(f"could not run {interpreter}: {error}") from error
    found = json.loads(listing.stdout)
    stdlib = Path(found["stdlib"])
    modules = set()
    for name in found["loaded"]:
        if not Path(name).is_relative_to(stdlib):
            continue  # the worker's own modules, copied from the package
        modules.add(Path(name))
        compiled = found["pyc"].get(name)
        if compiled and Path(compiled).is_file():
            modules.add(Path(compiled))
    return sorted(modules)


def _shared_libraries(binaries: list[Path]) -> dict[str, Path]:
    """Path the loader looks at -> the file here, for every library `binaries` load."""
    libraries: dict[str, Path] = {}
    for binary in binaries:
        try:
            listing = subprocess.run(
                ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError as error:
            raise ImageBuildError(f"cannot list the libraries of {binary}: {error}") from error
        for line in listing.stdout.splitlines():
            name, arrow, rest = line.strip().partition(" => ")
            target = rest if arrow else name
            if target.startswith("not found"):
                raise ImageBuildError(f"{binary} needs {name}, which is not installed")
            path = target.split(" (", 1)[0]
            if path.startswith("/"):
                # Where ldd says, the name the loader asks for; the bytes of what it points at.
                libraries[path] = Path(path).resolve()
    return libraries


def _tar(files: dict[str, tuple[Path, int]]) -> bytes:
    """A deterministic tar of `files`, their directories (0755) and /tmp."""
    strip = shutil.which("strip")
    directories = {"tmp"}
    for path in files:
        parent = Path(path.lstrip("/")).parent
        directories.update(str(p) for p in (parent, *parent.parents) if str(p) != ".")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for directory in sorted(directories):
            info = tarfile.TarInfo(directory)
            # /tmp is sticky and world-writable like any: the runtime mounts a tmpfs there,
            # which takes this mode, and the member runs as nobody.
            info.type, info.mtime = tarfile.DIRTYPE, 0
            info.mode = 0o1777 if directory == "tmp" else 0o755
            archive.addfile(info)
        for path in sorted(files):
            source, mtime = files[path]
            data = source.read_bytes()
            if strip is not None and data[:4] == _ELF:
                data = _stripped(strip, source)
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mtime = len(data), mtime
            info.mode = 0o755 if os.access(source, os.X_OK) else 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _stripped(strip: str, source: Path) -> bytes:
    """`source` without its debug information (binutils' strip writes a copy)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / source.name
        try:
            subprocess.run(
                [strip, "--strip-debug", "-o", str(copy), str(source)],
                capture_output=True,
                timeout=60,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise ImageBuildError(f"strip failed on {source}: {error}") from error
        return copy.read_bytes()
