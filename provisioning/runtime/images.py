"""Build the worker image locally, without any registry: this machine's Python and the worker.

The rootfs (`image_rootfs.py`) holds this machine's interpreter cut down to the standard
modules the worker imports, their shared libraries and the worker package; `docker import`
turns it into an image whose CMD runs the worker (`worker/`, the same code the process
runtime runs) on $PORT (default 8080) as an unprivileged user. The tar is built
deterministically and its sha256, with the command's, is stored as an image label, so
building again is a no-op unless a file or the command changed (or `force=True`). Every
engine of a fleet builds its own copy the same way (`build_image(client=<that engine's
client>)`): with no registry, an image cannot be pulled from one engine by another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from docker.utils import parse_repository_tag
from requests.exceptions import ConnectionError as RequestsConnectionError

from provisioning.runtime.base import ImageBuildError, RuntimeUnavailable
from provisioning.runtime.image_rootfs import worker_rootfs

log = logging.getLogger(__name__)

WORKER_IMAGE = "prewarm/worker:latest"
LABEL_DIGEST = "prewarm.worker.digest"
WORKER_PORT = 8080
NOBODY = "65534:65534"


def _image_changes(command: list[str], digest: str) -> list[str]:
    return [
        f"CMD {json.dumps(command)}",
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
    python: Path | None = None,
) -> str:
    """Import the worker image as `tag` unless an identical one exists; return its id.

    On `client`'s engine (default: the one `docker.from_env()` finds), around `python`
    (default: the interpreter running prewarm).
    """
    rootfs = worker_rootfs(python or Path(sys.executable))
    # The command is part of what the image is: a new one rebuilds it like a new file does.
    digest = hashlib.sha256(rootfs.tar + json.dumps(rootfs.command).encode()).hexdigest()
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
            rootfs.tar,
            repository=repository,
            tag=image_tag or "latest",
            changes=_image_changes(rootfs.command, digest),
        )
        image_id = str(client.images.get(tag).id)
        if existing is not None and existing[0] != image_id:
            _drop_replaced(client, existing[0])
    except RequestsConnectionError as error:
        raise RuntimeUnavailable(f"lost the Docker daemon while building {tag}: {error}") from error
    except APIError as error:
        raise ImageBuildError(f"docker import of {tag} failed: {error}") from error
    log.info("built %s (%s, %d KiB rootfs)", tag, image_id[:19], len(rootfs.tar) // 1024)
    return image_id
