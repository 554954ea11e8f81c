"""Real Ray clusters for tests and benchmarks, safely.

Ray probes public addresses to find its own IP and reports usage statistics unless told otherwise,
so every test marked ``ray`` runs in a network namespace that has only loopback: the test re-runs
itself as ``unshare -n sh -c 'ip link set lo up && exec python -m pytest NODEID'`` (see
``conftest.pytest_pyfunc_call``), with ``RAY_USAGE_STATS_ENABLED=0``. Inside, :class:`LoopbackCluster`
starts nodes on 127.0.0.1 with >= 2 CPUs each (1-CPU nodes can deadlock, ray#44687), a small object
store and a private, short temp dir (Ray's socket paths must stay under 108 bytes), and on exit
kills every process it started by PID, SIGTERM then SIGKILL (they survive SIGTERM for seconds).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IN_NETNS = "CURATION_TEST_NETNS"
# 128 MB per node: the tests move kilobytes; Ray's default (30 % of RAM) would claim GBs of a shared machine.
OBJECT_STORE_BYTES = 128 * 1024 * 1024
CPUS_PER_NODE = 2
KILL_GRACE_SECONDS = 5.0


def ray_environment() -> dict[str, str]:
    """No usage statistics; and Ray's single-machine mode, in which a process takes 127.0.0.1 as its
    node IP instead of probing 8.8.8.8 for it (``ray.cluster_utils`` still adds nodes)."""
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def run_in_netns(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` in a fresh network namespace holding only loopback."""
    script = 'ip link set lo up && exec "$@"'
    full_env = {**os.environ, **ray_environment(), IN_NETNS: "1", **(env or {})}
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", script, "sh", *argv],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_pids([*descendants(proc.pid), proc.pid])  # the run and every Ray process it started
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    children, found, stack = _children(), [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_pids(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            for pid in pids:  # reap our own children so they do not linger as zombies
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.1)


class LoopbackCluster:
    """A ``ray.cluster_utils.Cluster`` on 127.0.0.1; ``gpu_nodes`` of the nodes declare one (fake) GPU."""

    def __init__(self, nodes: int = 2, gpu_nodes: int = 0) -> None:
        if not os.environ.get(IN_NETNS):
            raise RuntimeError("a Ray cluster starts only inside the loopback network namespace")
        os.environ.update(ray_environment())
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: socket paths < 108 bytes
        os.environ["RAY_TMPDIR"] = self.temp_dir
        os.makedirs(f"{self.temp_dir}/ray")
        from ray.cluster_utils import Cluster

        self.cluster: Any = None
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args=self._node_args(gpu=False))
            self.nodes = [self.cluster.head_node]
            for k in range(1, nodes):
                self.nodes.append(self.cluster.add_node(**self._node_args(gpu=k >= nodes - gpu_nodes)))
            self.cluster.wait_for_nodes()
        except BaseException:
            self.stop()
            raise

    def _node_args(self, gpu: bool) -> dict[str, Any]:
        return {
            "num_cpus": CPUS_PER_NODE,
            "num_gpus": 1 if gpu else 0,
            "object_store_memory": OBJECT_STORE_BYTES,
            "node_ip_address": "127.0.0.1",
            "temp_dir": f"{self.temp_dir}/ray",
            "include_dashboard": False,
        }

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, env: dict[str, str]) -> Any:
        """One more node whose processes (its raylet and the workers it starts) see ``env`` over this
        process's environment: a machine configured otherwise (``ray start`` on it with that env)."""
        node = self.cluster.add_node(**self._node_args(gpu=False), env_vars=env)
        self.nodes.append(node)
        self.cluster.wait_for_nodes()
        return node

    def add_node_blind_to(self, hidden: Path) -> subprocess.Popen:
        """A node (`ray start`) in its own mount namespace where ``hidden`` is an empty tmpfs: a
        node that cannot see that directory."""
        script = 'mount -t tmpfs none "$1" && shift && exec "$@"'
        ray_cli = str(Path(sys.executable).with_name("ray"))
        start = [ray_cli, "start", f"--address={self.address}", f"--num-cpus={CPUS_PER_NODE}"]
        start += ["--node-ip-address=127.0.0.1", f"--object-store-memory={OBJECT_STORE_BYTES}", "--block"]
        return subprocess.Popen(
            ["unshare", "-m", "sh", "-c", script, "sh", str(hidden), *start],
            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},  # `ray start --address` needs it
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def drivers_seen(self) -> int:
        """How many drivers (``curation --engine ray`` runs) have connected so far, this query's own
        connection not counted."""
        import ray
        from ray._private.state import jobs

        ray.init(address=self.address)
        try:
            return len(jobs()) - 1
        finally:
            ray.shutdown()

    def busy_cpus(self, node: Any) -> float:
        """CPUs in use on ``node`` (by tasks and actors)."""
        import ray
        from ray._private.state import available_resources_per_node

        ray.init(address=self.address)
        try:
            return CPUS_PER_NODE - available_resources_per_node().get(node.node_id, {}).get("CPU", 0)
        finally:
            ray.shutdown()

    def remove_node(self, node: Any) -> None:
        """Kill ``node`` as a crash would (not gracefully)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)

    def tasks_seen(self) -> list[dict[str, Any]]:
        """Every task the cluster ran so far, from the task events the GCS keeps (for
        ``ray.timeline``): each attempt (a retry, an actor's restart) as its name (``f`` or
        ``Class.method``), required resources ({"CPU": 1.0, ...}) and the id of the node it ran on
        ("" while unknown)."""
        import ray
        from ray._private.state import state

        ray.init(address=self.address)
        try:
            seen: dict[tuple[bytes, int], dict[str, Any]] = {}
            for event in state._get_all_task_events():  # several partial events per attempt
                attempt = (event.task_id, event.attempt_number)
                task = seen.setdefault(attempt, {"name": "", "resources": {}, "node": ""})
                if event.HasField("task_info"):
                    task["name"] = event.task_info.func_or_class_name
                    task["resources"] = dict(event.task_info.required_resources)
                if event.HasField("state_updates") and event.state_updates.node_id:
                    task["node"] = event.state_updates.node_id.hex()
            return list(seen.values())
        finally:
            ray.shutdown()

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        started = descendants(os.getpid())
        if self.cluster is not None:
            try:
                self.cluster.shutdown()
            except Exception:  # noqa: BLE001 - whatever is left is killed by PID below
                pass
        kill_pids([pid for pid in started + descendants(os.getpid()) if Path(f"/proc/{pid}").exists()])
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rerun_inside_netns(nodeid: str, timeout: float) -> subprocess.CompletedProcess:
    """Run one test (``NODEID``) with pytest inside the namespace."""
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", nodeid]
    return run_in_netns(argv, timeout=timeout)
