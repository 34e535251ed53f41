"""The certificate of the file-drop servers: configured, or self-signed on first start.

``FLOWMILL_TLS_CERT`` / ``FLOWMILL_TLS_KEY`` name a PEM certificate and key; without
them the first start makes a self-signed EC certificate for localhost and the host name
(``DATA/tls/cert.pem``, key ``DATA/tls/key.pem`` mode 0600) and reuses it afterwards, so
clients can pin it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine.errors import FlowmillError

__all__ = ["certificate"]


def certificate(data_dir: Path) -> tuple[Path, Path]:
    """(cert, key) paths: the configured pair, or the self-signed one of ``data_dir``."""
    cert_env, key_env = os.environ.get("FLOWMILL_TLS_CERT"), os.environ.get("FLOWMILL_TLS_KEY")
    if cert_env or key_env:
        if not (cert_env and key_env):
            raise FlowmillError("set both FLOWMILL_TLS_CERT and FLOWMILL_TLS_KEY, or neither")
        cert, key = Path(cert_env), Path(key_env)
        for path in (cert, key):
            if not path.is_file():
                raise FlowmillError(f"TLS file {path} does not exist")
        return cert, key
    folder = Path(data_dir) / "tls"
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _self_signed(cert, key)
    return cert, key


def _self_signed(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Flowmill on {host}")])
    now = dt.datetime.now(dt.UTC)
    alt = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.DNSName(host),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
