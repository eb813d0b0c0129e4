"""Build the worker image locally, without any registry: busybox httpd in a ~2 MB rootfs.

The rootfs is a tar holding Debian's statically linked busybox (package `busybox-static`),
a `/www/health` file and a small index page; `docker import` turns it into an image whose
CMD runs `busybox httpd` in the foreground on $PORT (default 8080) as an unprivileged user.
The tar is built deterministically and its sha256 is stored as an image label, so building
again is a no-op unless busybox or the layout changed (or `force=True`). Every engine of a
fleet builds its own copy the same way (`build_image(client=<that engine's client>)`): with
no registry, an image cannot be pulled from one engine by another.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import tarfile
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from docker.utils import parse_repository_tag
from requests.exceptions import ConnectionError as RequestsConnectionError

from provisioning.runtime.base import ImageBuildError, RuntimeUnavailable

log = logging.getLogger(__name__)

WORKER_IMAGE = "prewarm/worker:latest"
BUSYBOX_PATH = Path("/bin/busybox")
INSTALL_HINT = "apt-get install -y busybox-static"
LABEL_DIGEST = "prewarm.worker.digest"
WORKER_PORT = 8080
NOBODY = "65534:65534"

_INDEX_HTML = b"<!doctype html><title>prewarm worker</title><p>prewarm worker: see /health\n"
_HEALTH = b"ok\n"
# /www/config is a link to /tmp/config, written at start from PREWARM_CONFIG (the composite
# the member was created from): `GET /config` reports it ("null" when created without one).
_CMD = [
    "/bin/busybox",
    "sh",
    "-c",
    'printf "%s" "${PREWARM_CONFIG:-null}" > /tmp/config'
    f' && exec /bin/busybox httpd -f -p "${{PORT:-{WORKER_PORT}}}" -h /www',
]
_PT_INTERP = 3  # ELF program header type naming the dynamic loader


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable with no dynamic loader (PT_INTERP) program header."""
    with open(path, "rb") as binary:
        header = binary.read(64)
        if header[:4] != b"\x7fELF":
            return False
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:  # 64-bit
            (phoff,) = struct.unpack(order + "Q", header[32:40])
            phentsize, phnum = struct.unpack(order + "HH", header[54:58])
        else:
            (phoff,) = struct.unpack(order + "I", header[28:32])
            phentsize, phnum = struct.unpack(order + "HH", header[42:46])
        binary.seek(phoff)
        table = binary.read(phentsize * phnum)
    types = (
        struct.unpack(order + "I", table[i : i + 4])[0] for i in range(0, len(table), phentsize)
    )
    return _PT_INTERP not in types


def check_busybox(busybox: Path = BUSYBOX_PATH) -> None:
    """Raise ImageBuildError unless `busybox` is a statically linked busybox binary."""
    if not busybox.is_file():
        raise ImageBuildError(
            f"{busybox} not found: the worker image is built from Debian's statically linked "
            f"busybox; install it with `{INSTALL_HINT}`"
        )
    if not _is_static_elf(busybox):
        raise ImageBuildError(
            f"{busybox} is dynamically linked (Debian's `busybox` package?) and would not run "
            f"in an image without libc; install the static one with `{INSTALL_HINT}`"
        )


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def _add_dir(archive: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    archive.addfile(info)


def worker_rootfs(busybox: Path = BUSYBOX_PATH) -> bytes:
    """The worker's root filesystem as a deterministic tar (same inputs, same bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for directory in ("bin", "www"):
            _add_dir(archive, directory)
        # Sticky and world-writable like any /tmp: the runtime mounts a tmpfs here, which
        # takes this directory's mode, and the member runs as nobody.
        _add_dir(archive, "tmp", 0o1777)
        _add_file(archive, "bin/busybox", busybox.read_bytes(), 0o755)
        _add_file(archive, "www/health", _HEALTH, 0o644)
        _add_file(archive, "www/index.html", _INDEX_HTML, 0o644)
        link = tarfile.TarInfo("www/config")
        link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "/tmp/config", 0o777, 0
        archive.addfile(link)
    return buffer.getvalue()


def _image_changes(digest: str) -> list[str]:
    return [
        f"CMD {json.dumps(_CMD)}",
        f"ENV PORT={WORKER_PORT}",
        f"EXPOSE {WORKER_PORT}",
        f"USER {NOBODY}",
        f"LABEL {LABEL_DIGEST}={digest}",
    ]


def _existing(client: docker.DockerClient, tag: str) -> tuple[str, str] | None:
    """(id, rootfs digest label) of the image tagged `tag`, or None."""
    try:
        image = client.images.get(tag)
    except ImageNotFound:
        return None
    return str(image.id), (image.labels or {}).get(LABEL_DIGEST, "")


def _drop_replaced(client: docker.DockerClient, image_id: str) -> None:
    """Remove the image a rebuild untagged, unless containers still use it."""
    try:
        client.images.remove(image_id)
    except APIError as error:
        log.info("kept replaced image %s: %s", image_id[:19], error.explanation)


def build_image(
    tag: str = WORKER_IMAGE,
    *,
    force: bool = False,
    client: docker.DockerClient | None = None,
    busybox: Path = BUSYBOX_PATH,
) -> str:
    """Import the worker image as `tag` unless an identical one exists; return its id.

    On `client`'s engine (default: the one `docker.from_env()` finds).
    """
    check_busybox(busybox)
    rootfs = worker_rootfs(busybox)
    # The command is part of what the image is: a new one rebuilds it like a new file does.
    digest = hashlib.sha256(rootfs + json.dumps(_CMD).encode()).hexdigest()
    try:
        client = client or docker.from_env()
    except DockerException as error:
        raise RuntimeUnavailable(
            f"cannot build {tag}: no Docker daemon answers ({error}); start it first"
        ) from error
    try:
        existing = _existing(client, tag)
        if existing is not None and existing[1] == digest and not force:
            log.info("image %s is up to date", tag)
            return existing[0]
        repository, image_tag = parse_repository_tag(tag)
        client.api.import_image_from_data(
            rootfs, repository=repository, tag=image_tag or "latest", changes=_image_changes(digest)
        )
        image_id = str(client.images.get(tag).id)
        if existing is not None and existing[0] != image_id:
            _drop_replaced(client, existing[0])
    except RequestsConnectionError as error:
        raise RuntimeUnavailable(f"lost the Docker daemon while building {tag}: {error}") from error
    except APIError as error:
        raise ImageBuildError(f"docker import of {tag} failed: {error}") from error
    log.info("built %s (%s, %d KiB rootfs)", tag, image_id[:19], len(rootfs) // 1024)
    return image_id
