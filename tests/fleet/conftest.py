"""Extra Docker Engines on this machine, started once per session: a fleet for the tests.

Each engine is a `dockerd` of its own (as docs/ENVIRONMENT.md shows): its own bridge (`ip link
add ... type bridge` on its own /16), socket, data root, exec root (short: containerd's
socket path lives under it) and pidfile, `--iptables=false`, and a default address pool of
its own so the members networks of different engines never pick the same subnet. Two listen
on unix sockets, one on `tcp://127.0.0.1:<free port>` with TLS (a CA, a server and a client
certificate made here with openssl). The machine's own daemon, its `docker0` and its socket
are never touched. Everything started is stopped by its pidfile's pid and removed at the end
of the session, also when a test fails. Without root, `dockerd`, `ip` or `openssl` the tests
skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from docker.errors import DockerException
from requests.exceptions import RequestException

from provisioning.runtime.engines import Engine, engine_client

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Candidate /16s for the engines' own bridges and their members networks: the first ones
# not routed on this machine are taken (the machine's daemon uses 172.17-28 first).
BRIDGE_RANGES = [f"172.{n}" for n in (29, 30, 31)] + [f"10.{n}" for n in range(200, 220)]
POOL_RANGES = [f"10.{n}" for n in range(230, 250)]


@dataclass
class ExtraEngine:
    """One extra dockerd: how to start, stop and reach it."""

    name: str
    bridge: str
    prefix: str  # "172.29": the bridge is <prefix>.0.1/16
    pool: str  # "10.230": members networks are /24s of <prefix>.0.0/16
    root: Path  # holds the data root, the log and the certificates
    exec_root: Path
    address: str
    tls: dict[str, str] = field(default_factory=dict)  # server side: ca, cert, key
    client_tls: dict[str, str] = field(default_factory=dict)  # ca, cert, key

    @property
    def pidfile(self) -> Path:
        return self.root / "docker.pid"

    def engine(self, host: str) -> Engine:
        """The inventory engine of `host` on this daemon."""
        tls = self.client_tls
        return Engine(host, self.address, tls.get("ca"), tls.get("cert"), tls.get("key"))

    def client(self) -> docker.DockerClient:
        """A plain Docker client of this engine (the caller closes it)."""
        return engine_client(self.engine(self.name), timeout_s=30.0)

    def command(self) -> list[str]:
        args = [
            "dockerd",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            f"--default-address-pool=base={self.pool}.0.0/16,size=24",
            f"--containerd-namespace=prewarm-{self.name}",
            f"--containerd-plugins-namespace=prewarm-{self.name}-plugins",
            "-H",
            self.address,
        ]
        if self.tls:
            args += [
                "--tlsverify",
                f"--tlscacert={self.tls['ca']}",
                f"--tlscert={self.tls['cert']}",
                f"--tlskey={self.tls['key']}",
            ]
        return args

    def start(self) -> None:
        """Start the daemon (same data root as before) and wait until it answers `info`."""
        with open(self.root / "dockerd.log", "ab") as log:
            daemon = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and daemon.poll() is None:
            with contextlib.suppress(DockerException, RequestException, OSError):
                client = engine_client(self.engine(self.name), timeout_s=2.0)
                try:
                    client.info()
                    return
                finally:
                    client.close()
            time.sleep(0.2)
        self.stop()
        tail = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
        state = "exited" if daemon.poll() is not None else f"silent for {START_TIMEOUT_S:g} s"
        raise RuntimeError(f"{self.name} did not start ({state}):\n{tail}")

    def stop(self) -> None:
        """Stop the daemon by its pidfile's pid: SIGTERM, up to 20 s, then SIGKILL."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it: ours, started with Popen
        self.pidfile.unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop the daemon and start it again on the same data root (its members stay)."""
        self.stop()
        self.start()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "extra Docker daemons need root (ip link add, dockerd)"
    for tool in ("dockerd", "ip", "openssl"):
        if shutil.which(tool) is None:
            return f"extra Docker daemons need `{tool}` on PATH"
    return None


def _routed_prefixes() -> set[str]:
    """The first two octets of every IPv4 route and address on this machine."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    out += subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    found = set()
    for word in out.split():
        parts = word.split("/")[0].split(".")
        if len(parts) == 4 and all(p.isdigit() for p in parts):
            found.add(".".join(parts[:2]))
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A CA, a server certificate for 127.0.0.1 and a client one: (server, client) files."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca = ["req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2"]
    _openssl(*ca, "-subj", "/CN=prewarm-test-ca", cwd=directory)
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        request = ["req", *ec, "-keyout", f"{who}-key.pem", "-out", f"{who}.csr"]
        _openssl(*request, "-subj", f"/CN=prewarm-test-{who}", cwd=directory)
        sign = ["x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem"]
        out = ["-CAcreateserial", "-out", f"{who}-cert.pem", "-days", "2"]
        _openssl(*sign, *out, "-extfile", f"{who}.ext", cwd=directory)
    files = {
        who: {
            "ca": str(directory / "ca.pem"),
            "cert": str(directory / f"{who}-cert.pem"),
            "key": str(directory / f"{who}-key.pem"),
        }
        for who in ("server", "client")
    }
    return files["server"], files["client"]


def _unmount_under(*paths: Path) -> None:
    """Unmount what a killed daemon left mounted under `paths` (deepest first)."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    prefixes = tuple(str(p) + "/" for p in paths)
    for point in sorted((p for p in points if p.startswith(prefixes)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class EnginesUnavailable(RuntimeError):
    """Extra engines cannot be started here (no root, a tool missing, no free ranges)."""


def _pools_in_use() -> set[str]:
    """The address pools (first two octets) of the dockerds running on this machine: a
    members network is only routed once made, so another session's engines may hold a pool
    `_routed_prefixes` cannot see yet."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            for arg in cmdline.read_bytes().split(b"\0"):
                if arg.startswith(b"--default-address-pool=base="):
                    address = arg.decode(errors="replace").split("=", 2)[2]
                    found.add(".".join(address.split(".")[:2]))
    return found


@contextlib.contextmanager
def started_engines(base: Path, count: int = 3) -> Iterator[list[ExtraEngine]]:
    """Start `count` extra engines under `base` (the last one TLS over tcp://127.0.0.1), each
    on a bridge of its own; stop them and remove bridges, mounts and files on the way out,
    also on failure. Raises `EnginesUnavailable` (nothing started) when they cannot run here.
    """
    reason = _missing_prerequisite()
    if reason is not None:
        raise EnginesUnavailable(reason)
    tag = os.getpid() % 100000  # bridge and paths unique to this process (15-char names)
    used = _routed_prefixes()
    bridges = [p for p in BRIDGE_RANGES if p not in used][:count]
    pools = [p for p in POOL_RANGES if p not in used | _pools_in_use()][:count]
    if len(bridges) < count or len(pools) < count:
        raise EnginesUnavailable(f"no free /16 ranges for {count} extra engine bridges")
    engines: list[ExtraEngine] = []
    for index, (prefix, pool) in enumerate(zip(bridges, pools, strict=True), start=1):
        name = f"e{index}"
        root = base / name
        root.mkdir(parents=True)
        engine = ExtraEngine(
            name=name,
            bridge=f"pwbr{index}-{tag}",
            prefix=prefix,
            pool=pool,
            root=root,
            exec_root=Path(f"/tmp/pw-{name}-{tag}"),
            address=f"unix:///tmp/pw-{name}-{tag}.sock",
        )
        if index == count:
            server, client = make_certificates(root / "certs")
            engine.address = f"tcp://127.0.0.1:{_free_port()}"
            engine.tls, engine.client_tls = server, client
        engines.append(engine)
    sweep_abandoned_engines()
    record = _record_engines(engines)
    made: list[ExtraEngine] = []
    try:
        for engine in engines:
            _ip("link", "add", "name", engine.bridge, "type", "bridge")
            made.append(engine)
            _ip("addr", "add", f"{engine.prefix}.0.1/16", "dev", engine.bridge)
            _ip("link", "set", engine.bridge, "up")
            engine.start()
        yield engines
    finally:
        for engine in engines:
            engine.stop()
        for engine in engines:
            if engine in made:
                with contextlib.suppress(subprocess.CalledProcessError):
                    _ip("link", "del", engine.bridge)
            _unmount_under(engine.exec_root, engine.root)
            shutil.rmtree(engine.exec_root, ignore_errors=True)
            if engine.address.startswith("unix://"):
                Path(engine.address.removeprefix("unix://")).unlink(missing_ok=True)
            shutil.rmtree(engine.root, ignore_errors=True)
        record.unlink(missing_ok=True)


RECORDS = Path(tempfile.gettempdir())
RECORD_PREFIX = "pw-fleet-"


def _record_engines(engines: list[ExtraEngine]) -> Path:
    """What a session starts, written before it starts it, for `sweep_abandoned_engines`."""
    record = RECORDS / f"{RECORD_PREFIX}{os.getpid()}.json"
    record.write_text(
        json.dumps(
            {
                "owner": os.getpid(),
                "engines": [
                    {
                        "pidfile": str(e.pidfile),
                        "bridge": e.bridge,
                        "exec_root": str(e.exec_root),
                        "root": str(e.root),
                        "socket": e.address.removeprefix("unix://")
                        if e.address.startswith("unix://")
                        else None,
                    }
                    for e in engines
                ],
            }
        )
    )
    return record


def sweep_abandoned_engines() -> None:
    """Stop what a session killed outright (no `finally` ran) left: the daemons of every
    record whose owner is gone, their bridges, mounts, sockets and files."""
    for record in RECORDS.glob(f"{RECORD_PREFIX}*.json"):
        try:
            content = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(content.get("owner", 0))):
            continue
        for engine in content.get("engines", []):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(Path(engine["pidfile"]).read_text().strip()), signal.SIGKILL)
            with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
                _ip("link", "del", engine["bridge"])
            _unmount_under(Path(engine["exec_root"]), Path(engine["root"]))
            shutil.rmtree(engine["exec_root"], ignore_errors=True)
            shutil.rmtree(engine["root"], ignore_errors=True)
            if engine.get("socket"):
                Path(engine["socket"]).unlink(missing_ok=True)
        record.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def extra_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ExtraEngine]]:
    """Three extra engines (two unix sockets, one TLS over tcp://127.0.0.1), session-wide."""
    with contextlib.ExitStack() as stack:
        try:
            engines = stack.enter_context(started_engines(tmp_path_factory.mktemp("engines")))
        except EnginesUnavailable as error:
            print(f"skipping the fleet engines: {error}")
            pytest.skip(str(error))
        yield engines
