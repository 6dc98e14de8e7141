"""Throw-away TLS files for tests: a CA, a server certificate for 127.0.0.1 signed by it, and
an unrelated CA (trusting only it must fail). Made with the openssl command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server certificate (SAN IP:127.0.0.1), signed by ca
    key: Path
    other_ca: Path  # an unrelated CA: trusting only it must fail


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_tls_files(d: Path) -> TlsFiles:
    for name in ("ca", "other"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=agentstream test {name} CA",
            # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA needs its key usage
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d,
        )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr", cwd=d,
    )  # fmt: skip
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"  # the OTLP tests use it as a client's too
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d,
    )  # fmt: skip
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "other.pem")


def encrypted_key(files: TlsFiles, d: Path, passphrase: str) -> Path:
    """``files.key`` encrypted with ``passphrase`` (AES-256), written in ``d``."""
    out = d / "encrypted.key"
    _openssl("pkey", "-in", files.key, "-aes256", "-passout", f"pass:{passphrase}", "-out", out,
             cwd=d)  # fmt: skip
    return out
