"""A small lab PKI for Flower deployments: a CA, the SuperLink's TLS certificate, and
SuperNode authentication key pairs (EC P-384 in OpenSSH format, as Flower expects).

Uses the ``cryptography`` package (a Flower dependency); no openssl/ssh-keygen needed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from fedtitan.errors import FedtitanError


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write atomically (temp file + rename); a private key is 0600 from its first byte."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if not private:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _node_pair(root: Path, name: str) -> tuple[Path, Path]:
    """Write a new EC P-384 key pair ``name`` / ``name.pub`` (OpenSSH format) in ``root``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = root / name, root / f"{name}.pub"
    _write(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), private=True)
    _write(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
           + b"\n")
    return priv, pub


def rotate_node(out: str | Path, node: str) -> tuple[Path, Path, str]:
    """Replace SuperNode key pair ``node`` (``supernode-3`` or ``3``) in ``out``; returns the new
    private and public key paths and the old public key (to find and unregister it)."""
    root = Path(out)
    name = f"supernode-{node}" if node.isdigit() else node
    if "/" in name or name.startswith("."):
        raise FedtitanError(f"--rotate takes a node name such as supernode-3 (or 3), not {node!r}")
    if not (root / "ca.crt").exists():
        raise FedtitanError(f"{root} has no ca.crt; create the lab first with: fedtitan certs {root}")
    old_pub = root / f"{name}.pub"
    if not old_pub.exists():
        have = sorted(p.stem for p in root.glob("supernode-*.pub"))
        raise FedtitanError(f"{old_pub} does not exist; nodes here: {', '.join(have) or '(none)'}")
    old = old_pub.read_text().strip()
    priv, pub = _node_pair(root, name)
    return priv, pub, old


def make_certs(out: str | Path, hosts: list[str], nodes: int = 2, days: int = 365) -> dict[str, Path]:
    """Create ``ca.crt``/``ca.key``, ``superlink.crt``/``superlink.key`` (SANs: ``hosts``) and
    ``supernode-{i}`` / ``supernode-{i}.pub`` key pairs in ``out``. Returns the paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if nodes < 0:
        raise FedtitanError(f"--nodes must be >= 0, got {nodes}")
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedtitanError(f"cannot create {root}: {exc.strerror}") from None
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtitan lab CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    sans: list[x509.GeneralName] = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    srv_key = ec.generate_private_key(ec.SECP384R1())
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    paths = {"ca.crt": root / "ca.crt", "ca.key": root / "ca.key", "superlink.crt": root / "superlink.crt",
             "superlink.key": root / "superlink.key"}
    _write(paths["ca.crt"], ca_cert.public_bytes(pem))
    _write(paths["ca.key"], ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), private=True)
    _write(paths["superlink.crt"], srv_cert.public_bytes(pem))
    _write(paths["superlink.key"], srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()), private=True)
    for i in range(nodes):
        priv, pub = _node_pair(root, f"supernode-{i}")
        paths[priv.name], paths[pub.name] = priv, pub
    return paths
