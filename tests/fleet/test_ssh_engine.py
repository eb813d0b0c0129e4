"""A host whose engine is `ssh://user@host`: reached through a real sshd on this machine
(started here on a free port, with its own host key and a key for the tests only), the way
Docker's own client does it: `ssh ... docker system dial-stdio`. The machine's ssh
configuration is never read or changed: an `ssh` on PATH for the test passes its own config.
Without root, sshd or a Docker daemon the test skips and says why (`.ci/run` installs
openssh)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.runtime.base import LABEL_HOST, LABEL_PLAN, ContainerSpec, probe_once
from provisioning.runtime.engines import Engine, probe
from provisioning.runtime.fleet import FleetRuntime

pytestmark = pytest.mark.docker

SSHD = "/usr/sbin/sshd"
PLAN = "test-ssh-engine"


def _free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def ssh_engine(docker_client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """ssh://root@127.0.0.1:<port> to this machine's Docker daemon, for this module."""
    missing = [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    if os.geteuid() != 0 or not Path(SSHD).exists() or missing:
        pytest.skip(f"an ssh:// engine needs root, {SSHD} and {', '.join(missing) or 'ssh'}")
    base = tmp_path_factory.mktemp("ssh")
    port = _free_port()
    _keygen(base / "host_key")
    _keygen(base / "client_key")
    # The key may only dial Docker, whatever command a client asks for.
    key = (base / "client_key.pub").read_text().strip()
    (base / "authorized_keys").write_text(f'command="docker system dial-stdio" {key}\n')
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        f"PidFile {base / 'sshd.pid'}\nUsePAM no\nStrictModes no\n"
    )
    (base / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {base / 'client_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {base / 'known_hosts'}\n  StrictHostKeyChecking accept-new\n"
        "  BatchMode yes\n"
    )
    bin_dir = base / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {base / "ssh_config"} "$@"\n')
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    daemon = subprocess.Popen(
        [SSHD, "-D", "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")],
        start_new_session=True,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        try:
            engine = Engine("node-ssh", f"ssh://root@127.0.0.1:{port}")
            deadline = time.monotonic() + 20
            while not probe(engine).healthy and time.monotonic() < deadline:
                time.sleep(0.3)
            yield engine
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


def test_members_live_and_answer_on_an_ssh_engine(ssh_engine: Engine, worker_image: str):
    health = probe(ssh_engine)
    assert health.healthy, health.error
    assert health.cpu_cores and health.cpu_cores >= 1  # `docker info`, over ssh
    fleet = FleetRuntime({"node-ssh": ssh_engine})
    spec = ContainerSpec(
        "ssh-client", PLAN, "shadow", worker_image, 0.1, 32, labels={LABEL_HOST: "node-ssh"}
    )
    try:
        member = fleet.create(spec)
        assert member.tier == "shadow"
        active, _ = fleet.activate(member.id)
        assert active.tier == "active" and probe_once(active.endpoint, timeout_s=2.0)
        listed = fleet.list({LABEL_PLAN: PLAN})
        assert [(m.id, m.labels[LABEL_HOST]) for m in listed] == [(member.id, "node-ssh")]
        fleet.release(member.id)
        assert fleet.list({LABEL_PLAN: PLAN}) == []
    finally:
        for leftover in fleet.list({LABEL_PLAN: PLAN}):
            fleet.release(leftover.id)
        fleet.close()
