"""Helpers of the deployment tests: certificates, a socket page, subprocess servers."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import rtserver
from rtserver.websocket.wsgi import websocket_app

ROOT = Path(__file__).resolve().parents[2]

# -- TLS ---------------------------------------------------------------------------------


def make_certificates(directory: Path) -> dict[str, str]:
    """A root CA, an intermediate CA and a leaf for 127.0.0.1/localhost (PEM files).

    Returns the paths: ``ca`` (trust this), ``chain`` (the intermediate, which the
    server must send), ``cert`` and ``key`` (the leaf).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject: str, issuer: str, key: Any, issuer_key: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = build("rtserver test root", "rtserver test root", root_key, root_key, True)
    mid = build("rtserver test intermediate", "rtserver test root", mid_key, root_key, True)
    leaf = build("localhost", "rtserver test intermediate", leaf_key, mid_key, False)
    pem = serialization.Encoding.PEM
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "chain", "cert", "key")}
    Path(paths["ca"]).write_bytes(root.public_bytes(pem))
    Path(paths["chain"]).write_bytes(mid.public_bytes(pem))
    Path(paths["cert"]).write_bytes(leaf.public_bytes(pem))
    Path(paths["key"]).write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def verifying_context(ca: str) -> ssl.SSLContext:
    """A client context trusting only ``ca``, checking the host name."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    return ctx


# -- a WebSocket endpoint reached through an Application -----------------------------------

_echo_app: Any = None


def upgrade_to_echo() -> bytes:
    """Upgrade the current request to an echo WebSocket from inside a page handler.

    The Application path of the upgrade contract (101 + ``rtserver.upgrade`` set while
    the pipeline runs), which the native server takes over just like the WSGI ones.
    """
    global _echo_app
    if _echo_app is None:
        from ws4py.websocket import EchoWebSocket

        _echo_app = websocket_app(EchoWebSocket)
    got: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got[:] = [status, headers]

    body = b"".join(_echo_app(rtserver.request.wsgi_environ, start_response))
    status, headers = got
    response = rtserver.response
    response.status = status
    response.headers.pop("Content-Type", None)
    for key, value in headers:
        response.headers[key] = value
    return body


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python ARGS`` in the repository with rtserver importable."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("RTSERVER_LISTEN_FD", None)
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` on a fresh connection: ``(status, body)``."""
    req = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """Wait until ``url`` answers (fail early when ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"server exited with {proc.returncode}:\n{out}\n{err}")
        try:
            fetch(url, timeout=1.0)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def stop(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str, str]:
    """SIGTERM ``proc``; return its exit code and output (kill the group if stuck)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"process did not stop on SIGTERM:\n{out}\n{err}") from None
    return proc.returncode, out, err


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
