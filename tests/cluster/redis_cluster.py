"""A throwaway Redis Cluster on loopback: 3 masters, 3 replicas, from the installed binaries.

The cluster tests (and the failover measurement in ``bench/failover.py``) need a real
cluster whose masters they may kill. This starts six ``redis-server`` processes on
fixed loopback ports (17100-17105, cluster bus +10000) in a temporary directory,
joins them with ``redis-cli --cluster create --cluster-replicas 1`` and waits until
every node reports ``cluster_state:ok`` and agrees on who serves each slot.

Short node timeouts make a failover take about two seconds, so a test that kills
a master stays quick. Nothing is persisted (``--save ""``; ``appendonly`` only
when asked), so a killed node that comes back knows only what its new master
sends it, as a crashed node without disks would.

One cluster per session: a lock file keeps two sessions from fighting over the
ports, and nodes a crashed earlier session left behind are found by the pid files
it wrote and stopped, by pid, after checking the pid is still that redis-server.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BASE_PORT = 17100
NODES = 6
NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout: a dead master is failed over roughly two of these later."""
START_TIMEOUT = 30.0
STATE_DIR = Path(tempfile.gettempdir()) / "ledgerflow-redis-cluster"
"""Pid files and the session lock: fixed, so a later session finds what an earlier left."""


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be started here (binaries missing, ports taken): a reason to skip."""


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout


def _ours(pid: int, port: int) -> bool:
    """Is ``pid`` still a redis-server on ``port`` (not a recycled pid of something else)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and b"redis-server" in cmdline[0] and str(port).encode() in cmdline


@dataclass(frozen=True)
class NodeInfo:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    master: bool
    master_id: str
    failed: bool
    slots: tuple[tuple[int, int], ...]


@dataclass
class RedisClusterNodes:
    """Six nodes, their processes, and the operations a failover test needs."""

    base_port: int = BASE_PORT
    appendonly: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lf-rcluster-")))
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _lock: IO[str] | None = None

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(NODES)]

    def url(self, *, scheme: str = "redis+cluster", query: str = "") -> str:
        """The ``redis+cluster://`` URL naming the first three nodes (any one would do)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])
        return f"{scheme}://{hosts}{'?' + query if query else ''}"

    # --- start and stop ------------------------------------------------------------------

    def start(self) -> None:
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise ClusterUnavailable(f"{binary} is not installed (apt-get install redis)")
        STATE_DIR.mkdir(exist_ok=True)
        self._take_lock()
        self._stop_stale()
        busy = [p for p in self.ports for q in (p, p + 10000) if _port_open(q)]
        if busy:
            raise ClusterUnavailable(f"loopback ports {busy} are in use by something else")
        atexit.register(self.stop)
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_serving(port)
            created = subprocess.run(
                [
                    "redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas", "1", "--cluster-yes",
                ],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> None:
        handle = open(STATE_DIR / f"{self.base_port}.lock", "w")  # noqa: SIM115 (held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ClusterUnavailable(
                f"another test session runs the Redis Cluster on ports {self.ports}"
            ) from None
        self._lock = handle

    def _pidfile(self, port: int) -> Path:
        return STATE_DIR / f"{port}.pid"

    def _stop_stale(self) -> None:
        """Stop nodes an earlier session left running (it crashed before its finalizer)."""
        for port in self.ports:
            pidfile = self._pidfile(port)
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if _ours(pid, port):
                    os.kill(pid, signal.SIGKILL)
                    for _ in range(50):
                        if not _ours(pid, port):
                            break
                        time.sleep(0.05)
            pidfile.unlink(missing_ok=True)

    def _node_dir(self, port: int) -> Path:
        folder = self.root / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _spawn(self, port: int) -> None:
        folder = self._node_dir(port)
        args = [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica however stale may take over: the tests want a failover, always.
            "--cluster-replica-validity-factor", "0",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            # DEBUG SLEEP stalls a replica (a lagging link) in the failover measurement.
            "--enable-debug-command", "local",
            "--dir", str(folder),
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._pidfile(port).write_text(str(self.procs[port].pid))

    def _wait_serving(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while _cli(port, "PING").strip() != "PONG":
            proc = self.procs[port]
            if proc.poll() is not None:
                log = self._node_dir(port) / "redis.log"
                raise RuntimeError(f"redis-server :{port} exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server :{port} did not answer PING")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill every node (they hold nothing worth a clean shutdown), remove their files."""
        for port, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._pidfile(port).unlink(missing_ok=True)
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- state ---------------------------------------------------------------------------

    def nodes(self, via: int | None = None) -> list[NodeInfo]:
        """CLUSTER NODES as seen by ``via`` (default: the first live node)."""
        port = via if via is not None else self.live_ports()[0]
        found = []
        for line in _cli(port, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            flags = parts[2].split(",")
            slots = []
            for spec in parts[8:]:
                if spec.startswith("["):
                    continue  # a slot being migrated
                low, _, high = spec.partition("-")
                slots.append((int(low), int(high or low)))
            found.append(
                NodeInfo(
                    node_id=parts[0],
                    port=int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                    master="master" in flags,
                    master_id=parts[3],
                    failed="fail" in flags or "fail?" in flags,
                    slots=tuple(slots),
                )
            )
        return found

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        return sorted(n.port for n in self.nodes() if n.master and not n.failed and n.slots)

    def master_of_slot(self, slot: int) -> int:
        for node in self.nodes():
            if node.master and not node.failed and any(lo <= slot <= hi for lo, hi in node.slots):
                return node.port
        raise LookupError(f"no live master serves slot {slot}")

    def replica_of(self, master_port: int) -> int:
        nodes = self.nodes()
        master = next(n for n in nodes if n.port == master_port)
        return next(n.port for n in nodes if n.master_id == master.node_id and not n.failed)

    def healthy(self) -> bool:
        """Every live node: cluster_state ok, the same slot owners, a replica per master."""
        views = []
        for port in self.live_ports():
            if "cluster_state:ok" not in _cli(port, "CLUSTER", "INFO"):
                return False
            nodes = self.nodes(port)
            owners = sorted((n.port, n.slots) for n in nodes if n.master and n.slots)
            views.append(owners)
            if any(n.failed for n in nodes if n.port in self.live_ports()):
                return False
        if not views or any(v != views[0] for v in views):
            return False
        masters = [n for n in self.nodes() if n.master and n.slots]
        replicas = [n for n in self.nodes() if not n.master and not n.failed]
        return len(masters) == NODES // 2 and len(replicas) == len(self.live_ports()) - len(masters)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> float:
        """Block until ``healthy()``; the seconds it took."""
        began = time.monotonic()
        while not self.healthy():
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"the Redis Cluster is not healthy after {timeout:g} s")
            time.sleep(0.1)
        return time.monotonic() - began

    # --- faults --------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL one node: a crash, no chance to hand anything over."""
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again; it rejoins (from its nodes.conf) as a replica."""
        if self.procs[port].poll() is None:
            raise RuntimeError(f"node :{port} is still running")
        self._spawn(port)
        self._wait_serving(port)

    def kill_master(self, port: int) -> int:
        """SIGKILL the master on ``port``; the port of its replica, which will take over."""
        replica = self.replica_of(port)
        self.kill(port)
        return replica

    def wait_caught_up(self, master: int, replica: int, timeout: float = 30.0) -> None:
        """Block until ``replica`` has applied everything ``master`` had written when called.

        Replication is asynchronous: what the master acknowledged a moment ago may not
        have reached its replica yet, and a fault injected now would lose it too.
        """
        target = _info_int(master, "master_repl_offset")
        deadline = time.monotonic() + timeout
        while _info_int(replica, "slave_repl_offset") < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica :{replica} did not catch up with :{master}")
            time.sleep(0.02)

    def stall(self, port: int, seconds: float) -> subprocess.Popen[bytes]:
        """``DEBUG SLEEP`` on a node, in the background: it reads nothing, replication backs up.

        Returns once the node has stopped answering, so what the caller writes next
        is not read by it before its sleep begins.
        """
        sleeper = subprocess.Popen(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "DEBUG", "SLEEP", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_asleep(port, timeout=min(seconds, 5.0))
        return sleeper

    def wait_promoted(self, replica: int, timeout: float = START_TIMEOUT) -> float:
        """Block until ``replica`` serves slots as a master and every live node says ok."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            with contextlib.suppress(StopIteration, subprocess.TimeoutExpired):
                node = next(n for n in self.nodes(replica) if n.port == replica)
                if (
                    node.master
                    and node.slots
                    and all(
                        "cluster_state:ok" in _cli(p, "CLUSTER", "INFO") for p in self.live_ports()
                    )
                ):
                    return time.monotonic() - began
            time.sleep(0.05)
        raise RuntimeError(f"replica :{replica} was not promoted within {timeout:g} s")


def _info_int(port: int, field: str) -> int:
    """One integer field of a node's INFO REPLICATION (-1 when it is not there)."""
    for line in _cli(port, "INFO", "REPLICATION").splitlines():
        name, _, value = line.strip().partition(":")
        if name == field:
            return int(value)
    return -1


def _wait_asleep(port: int, timeout: float) -> None:
    """Return once the node on ``port`` stops answering (its DEBUG SLEEP has begun)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A bare socket: redis-py retries a timed-out read, which would wait the sleep out.
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            sock.settimeout(0.2)
            try:
                sock.recv(16)
            except TimeoutError:
                return
        time.sleep(0.02)
    raise RuntimeError(f"node :{port} still answers: its DEBUG SLEEP did not start")


def keyslot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag), as the servers compute it."""
    from redis.crc import key_slot

    return int(key_slot(key.encode() if isinstance(key, str) else key))


@contextlib.contextmanager
def started(appendonly: bool = False, base_port: int = BASE_PORT) -> Iterator[RedisClusterNodes]:
    """A cluster for the block, stopped however the block ends."""
    cluster = RedisClusterNodes(base_port=base_port, appendonly=appendonly)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def masters_of(cluster: RedisClusterNodes, keys: Sequence[str]) -> set[int]:
    """The master ports serving ``keys``."""
    return {cluster.master_of_slot(keyslot(k)) for k in keys}
