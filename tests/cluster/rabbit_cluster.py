"""A 3-node RabbitMQ cluster of the tests' own: started, broken, mended and stopped here.

Built from the installed ``rabbitmq-server`` (3.10 on the CI machine), on loopback
only, next to the machine's own node, which it never touches:

* **Names and ports of its own.** Nodes ``lfc1@localhost`` .. ``lfc3@localhost``,
  AMQP on 127.0.0.1:5681-5683, Erlang distribution on 127.0.0.1:25681-25683. The
  machine's node (``rabbit@<host>``, 5672, 25672) is never named by any command here.
  Only the port mapper (epmd, 127.0.0.1:4369) is shared, as it is between any two
  Erlang nodes of one host.
* **A cookie of its own.** Every node and every ``rabbitmqctl`` call here gets
  ``HOME`` set to this cluster's directory, whose ``.erlang.cookie`` is random per
  session. The machine's node has another cookie (``/var/lib/rabbitmq``), so the two
  cannot even talk to each other: no command here can join, stop or change it, even
  by mistake. (RABBITMQ_ERLANG_COOKIE would do the same but is deprecated in 3.10.)
* **One directory.** ``<tmp>/ledgerflow-rabbit-cluster/lfcN`` holds each node's env
  file (``RABBITMQ_CONF_ENV_FILE``: node name, ports, data, logs, config and plugins
  files, pid file), its ``rabbitmq.conf`` (the listener) and its data and logs;
  owned by the ``rabbitmq`` user when the tests run as root (the nodes run as that
  user, as the packaged server does), by the test user otherwise.
* **One session at a time.** A lock file (``flock``) is held while the cluster
  exists, because the names and ports are fixed. A session that takes the lock
  first stops whatever nodes a crashed session left (found by their
  ``RABBITMQ_CONF_ENV_FILE`` in ``/proc/<pid>/environ``, which the machine's node
  does not have) and wipes the directory.

**Forming the cluster.** Node 1 boots first; nodes 2 and 3 then boot together and
join it through peer discovery (``classic_config`` listing node 1), as the compose
file's cluster profile forms its cluster. Measured on the 2-core CI machine: 1 then
2+3 takes about 30 s; booting all three and joining with ``rabbitmqctl stop_app;
join_cluster; start_app`` took about 60 s (each CLI call costs 1.5-5 s), and booting
all three at once with discovery races (a node that finds no peer up starts alone).
The cluster's AMQP user is node 1's ``default_user``, so no CLI call is needed for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

BASE = Path(tempfile.gettempdir()) / "ledgerflow-rabbit-cluster"
LOCK = Path(tempfile.gettempdir()) / "ledgerflow-rabbit-cluster.lock"
HOST = "localhost"
FIRST_AMQP_PORT = 5681
FIRST_DIST_PORT = 25681
SIZE = 3
USER = "ledgerflow"
"""The cluster's AMQP user, with a random password: logs are checked for it."""

BOOT_TIMEOUT = 120.0
LOCK_TIMEOUT = 600.0
"""Seconds to wait for another session's cluster tests to finish with the cluster."""

PACKAGED_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
"""Debian's real scripts; /usr/sbin/rabbitmq-server is a wrapper that insists on its own
user, HOME and cookie, so the nodes are started from here."""


def scripts_dir() -> Path | None:
    """Where ``rabbitmq-server`` and ``rabbitmqctl`` really are; None without RabbitMQ."""
    if (PACKAGED_SCRIPTS / "rabbitmq-server").exists():
        return PACKAGED_SCRIPTS
    found = shutil.which("rabbitmq-server")
    return Path(found).resolve().parent if found else None


@dataclass(frozen=True)
class Node:
    index: int
    directory: Path

    @property
    def name(self) -> str:
        return f"lfc{self.index}@{HOST}"

    @property
    def amqp_port(self) -> int:
        return FIRST_AMQP_PORT + self.index - 1

    @property
    def dist_port(self) -> int:
        return FIRST_DIST_PORT + self.index - 1

    @property
    def env_file(self) -> Path:
        return self.directory / "env"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ClusterError(RuntimeError):
    """The cluster could not be built, changed or stopped; says which command and why."""


class RabbitCluster:
    """The nodes, the commands that run them, and the AMQP URLs that reach them."""

    def __init__(self, scripts: Path, base: Path = BASE, size: int = SIZE) -> None:
        self.scripts = scripts
        self.base = base
        self.home = base / "home"
        self.nodes = [Node(i, base / f"lfc{i}") for i in range(1, size + 1)]
        self.password = f"lf-{secrets.token_hex(12)}"
        self.run_as = "rabbitmq" if os.geteuid() == 0 else None
        self._lock: TextIO | None = None
        self.boot_seconds = 0.0

    # --- URLs ---------------------------------------------------------------------------

    def url(self, node: Node, *, password: str | None = None) -> str:
        return (
            f"amqp://{USER}:{self.password if password is None else password}"
            f"@127.0.0.1:{node.amqp_port}/"
        )

    def urls(self, order: Sequence[Node] | None = None) -> str:
        """The comma-separated URL list LEDGERFLOW_AMQP_URL takes, in ``order``."""
        return ",".join(self.url(node) for node in (order or self.nodes))

    def node_of_port(self, port: int) -> Node:
        [node] = [n for n in self.nodes if n.amqp_port == port]
        return node

    # --- building and tearing down -------------------------------------------------------

    def start(self) -> float:
        """Lock, clear what a crashed session left, boot, join; the seconds it took."""
        began = time.monotonic()
        self._take_lock()
        try:
            self._clear_stale()
            self._check_ports_free()
            self._lay_out()
            first, *others = self.nodes
            self.start_node(first)
            with ThreadPoolExecutor(len(others)) as pool:
                list(pool.map(self.start_node, others))
            running = self.running_nodes()
            if sorted(running) != sorted(n.name for n in self.nodes):
                raise ClusterError(f"after the joins the running nodes are {running}")
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - began
        return self.boot_seconds

    def stop(self) -> None:
        """Kill every node, remove the directory, release the lock.

        SIGKILL rather than ``rabbitmqctl stop``: the data is thrown away anyway, and a
        graceful stop costs seconds per node. Safe to call twice and after a failed
        start (the pytest finalizer and atexit both call it).
        """
        if self._lock is None:
            return
        try:
            self._clear_stale()
        finally:
            lock, self._lock = self._lock, None
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _take_lock(self) -> None:
        lock = open(LOCK, "a+")  # noqa: SIM115 - held until stop()
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise ClusterError(
                        f"another test session has held {LOCK} for {LOCK_TIMEOUT:g} s; "
                        "its RabbitMQ cluster tests use the same node names and ports"
                    ) from None
                time.sleep(1.0)
        self._lock = lock

    def _clear_stale(self) -> None:
        """Kill this cluster's nodes, also those a crashed session left, and wipe the directory.

        Only called with the lock held: no other session runs nodes from this directory.
        """
        for pid in self._our_beams():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self._our_beams() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.base, ignore_errors=True)

    def _our_beams(self) -> list[int]:
        """Pids of Erlang VMs started with an env file of this cluster's directory."""
        marker = f"RABBITMQ_CONF_ENV_FILE={self.base}/".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"beam" not in (entry / "cmdline").read_bytes():
                    continue
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def _check_ports_free(self) -> None:
        for node in self.nodes:
            for port in (node.amqp_port, node.dist_port):
                with socket.socket() as sock:
                    sock.settimeout(1.0)
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        raise ClusterError(
                            f"port {port} (for {node.name}) is in use by another program; "
                            "the cluster tests need 5681-5683 and 25681-25683 free"
                        )

    def _lay_out(self) -> None:
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        for node in self.nodes:
            for sub in ("data", "log"):
                (node.directory / sub).mkdir(parents=True)
            config = node.directory / "rabbitmq.conf"
            config.write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
                # Made by node 1 at its first boot; the others take the cluster's users.
                f"default_user = {USER}\n"
                f"default_pass = {self.password}\n"
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"cluster_formation.classic_config.nodes.1 = {self.nodes[0].name}\n"
            )
            config.chmod(0o600)
            plugins = node.directory / "enabled_plugins"
            plugins.write_text("[].\n")
            node.env_file.write_text(
                f"NODENAME={node.name}\n"
                f"NODE_IP_ADDRESS=127.0.0.1\n"
                f"NODE_PORT={node.amqp_port}\n"
                f"DIST_PORT={node.dist_port}\n"
                f"MNESIA_BASE={node.directory / 'data'}\n"
                f"LOG_BASE={node.directory / 'log'}\n"
                f"CONFIG_FILE={config}\n"
                f"ENABLED_PLUGINS_FILE={plugins}\n"
                f"PID_FILE={node.pid_file}\n"
                "ERL_EPMD_ADDRESS=127.0.0.1\n"
                # Distribution (nodes and CLI) on loopback only, as the machine's node does.
                'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
                # No busy-waiting schedulers: four Erlang VMs share two cores here.
                'SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"\n'
            )
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    # --- one node ------------------------------------------------------------------------

    def start_node(self, node: Node) -> None:
        """Boot ``node`` (detached) and wait until its app runs; it rejoins its cluster itself."""
        self._run(node, "rabbitmq-server", "-detached", timeout=60)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not node.pid_file.exists():
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} wrote no pid file:\n{node.log_tail()}")
            time.sleep(0.1)
        self.ctl(node, "wait", str(node.pid_file), "--timeout", str(int(BOOT_TIMEOUT)))

    def kill(self, node: Node) -> int:
        """SIGKILL the node's Erlang VM (a crash, not a shutdown); its pid."""
        pid = node.pid()
        if pid is None or not _alive(pid):
            raise ClusterError(f"{node.name} is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        node.pid_file.unlink(missing_ok=True)
        return pid

    def ensure_running(self, node: Node) -> None:
        """Start ``node`` again if it is down, and wait until the cluster has all its nodes."""
        pid = node.pid()
        if pid is None or not _alive(pid):
            node.pid_file.unlink(missing_ok=True)
            self.start_node(node)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while sorted(running := self.running_nodes()) != sorted(n.name for n in self.nodes):
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} did not rejoin: running {running}")
            time.sleep(0.5)

    # --- asking the cluster ----------------------------------------------------------------

    def running_nodes(self, via: Node | None = None) -> list[str]:
        status = self.ctl_json(via or self._any_running(), "cluster_status")
        return list(status.get("running_nodes", []))

    def quorum_queues(self, via: Node | None = None) -> dict[str, dict[str, Any]]:
        """Every queue's type, leader and members, by name (``list_queues``)."""
        rows = self.ctl_json(
            via or self._any_running(), "list_queues", "name", "type", "leader", "members"
        )
        return {row["name"]: row for row in rows}

    def connections(self, via: Node | None = None) -> list[dict[str, Any]]:
        """Client connections, cluster-wide: the server port tells the node."""
        return list(
            self.ctl_json(
                via or self._any_running(), "list_connections", "name", "port", "client_properties"
            )
        )

    def _any_running(self) -> Node:
        for node in self.nodes:
            pid = node.pid()
            if pid is not None and _alive(pid):
                return node
        raise ClusterError("no node of the cluster is running")

    def ctl_json(self, node: Node, *args: str) -> Any:
        done = self.ctl(node, *args, "--formatter", "json")
        return json.loads(done.stdout)

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> ...`` with this cluster's cookie; ClusterError if it fails."""
        return self._run(node, "rabbitmqctl", "-n", node.name, *args, timeout=timeout)

    def _run(
        self, node: Node, script: str, *args: str, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(node.env_file),
            "LANG": "C.UTF-8",
        }
        command = [str(self.scripts / script), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", "env", *_assignments(env), *command]
        try:
            done = subprocess.run(
                command,
                env=env,
                cwd=self.base,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{script} {' '.join(args)} took over {timeout:g} s") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()[-1500:]
            raise ClusterError(
                f"{script} {' '.join(args)} exited {done.returncode}: {said}\n"
                f"{node.name} log:\n{node.log_tail()}".replace(self.password, "***")
            )
        return done


def _assignments(env: dict[str, str]) -> Iterator[str]:
    return (f"{key}={value}" for key, value in env.items())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed VM is a zombie until its parent (init, for a detached node) reaps it.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True
