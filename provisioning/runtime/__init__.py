"""Container runtimes: provision pool members as Docker containers or local processes.

`select_runtime` picks one; everything else speaks the `ContainerRuntime` protocol.
"""

from provisioning.runtime.base import (
    ActivationTimeout,
    ContainerRuntime,
    ContainerSpec,
    ImageBuildError,
    ImageMissing,
    Member,
    MemberNotFound,
    PrewarmRuntimeError,
    RuntimeUnavailable,
    Tier,
)
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.images import WORKER_IMAGE, build_image
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.runtime.select import docker_available, select_runtime

__all__ = [
    "WORKER_IMAGE",
    "ActivationTimeout",
    "ContainerRuntime",
    "ContainerSpec",
    "DockerRuntime",
    "ImageBuildError",
    "ImageMissing",
    "Member",
    "MemberNotFound",
    "PrewarmRuntimeError",
    "ProcessRuntime",
    "RuntimeUnavailable",
    "Tier",
    "build_image",
    "docker_available",
    "select_runtime",
]
