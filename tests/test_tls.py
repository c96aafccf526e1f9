"""Mutual TLS between the client and the orchestrator (issue 9, item 6).

A throwaway CA is made for each test session with ``cryptography`` (nothing
is committed): a server certificate for 127.0.0.1, client certificates whose
common name names an agency (``agency-7``), one naming none, and one signed
by another CA.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from fastframe.client import Client, ClientError
from fastframe.messages import Finished, decode_frame
from fastframe.orchestrator.tls import agency_of, client_context, server_context
from helpers_system import needs_sigterm
from test_orchestrator import (
    FAIL, SOCKET_TIMEOUT, SUCCESS, MemorySink, Server, as_multisets, decode, expected_rows,
    finished_frame, numbered_batch, stored_rows,
)

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _name(cn: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, key, cert) -> Tuple[str, str]:
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


def _certificate(subject: str, key, issuer_name, issuer_key, *, ca: bool = False,
                 server: bool = False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    # Key identifiers and key usage: Python 3.13's default contexts verify
    # strictly (VERIFY_X509_STRICT) and refuse certificates without them.
    builder = (builder
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                   encipher_only=False, decipher_only=False), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Dict[str, Tuple[str, str]]:
    """name -> (certificate path, key path); "ca" and "other-ca" have the CA certificates."""
    folder = tmp_path_factory.mktemp("pki")
    out: Dict[str, Tuple[str, str]] = {}
    cas = {}
    for ca_name in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"fastframe test {ca_name}", key, _name(f"fastframe test {ca_name}"),
                            key, ca=True)
        cas[ca_name] = (cert, key)
        out[ca_name] = _write(folder, ca_name, key, cert)
    ca_cert, ca_key = cas["ca"]
    leaves = {"server": ("127.0.0.1", "ca", True), "agency-7": ("agency-7", "ca", False),
              "nobody": ("nobody", "ca", False), "stranger-7": ("agency-7", "other-ca", False)}
    for stem, (cn, issuer, is_server) in leaves.items():
        issuer_cert, issuer_key = cas[issuer]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(cn, key, issuer_cert.subject, issuer_key, server=is_server)
        out[stem] = _write(folder, stem, key, cert)
    return out


@pytest.fixture
def tls_server(pki):
    cert, key = pki["server"]
    server = Server(MemorySink(), ssl_context=server_context(cert, key, pki["ca"][0]),
                    header_timeout=2.0)
    yield server
    server.stop()


def _context(pki, who: Optional[str]) -> ssl.SSLContext:
    if who is None:
        return client_context(pki["ca"][0])
    return client_context(pki["ca"][0], *pki[who])


def _tls_wire(address, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=SOCKET_TIMEOUT)
    return context.wrap_socket(raw, server_hostname=address[0])


def _recv_until_closed(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def _refused(address, context: ssl.SSLContext) -> bool:
    """The server ends a connection made with ``context`` before storing anything."""
    try:
        sock = _tls_wire(address, context)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True   # refused in the handshake
    with sock:
        try:
            sock.sendall(numbered_batch(1))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True
        return _recv_until_closed(sock) == b""


def test_agency_of_reads_the_common_name():
    def cert(*cns):
        return {"subject": tuple((("commonName", cn),) for cn in cns)}   # one RDN each

    assert agency_of(cert("agency-7")) == 7
    assert agency_of(cert("agency-0")) == 0
    for refused in [cert(), cert("agency-"), cert("agency-x"), cert("agency--1"),
                    cert(" agency-7"), cert("agency-7", "agency-8"), {}]:
        assert agency_of(refused) is None


def test_a_client_with_its_agency_certificate_sends_over_tls(tls_server, pki, tmp_path):
    from fastframe.datagen import generate

    data = tmp_path / "data"
    generate(data, transactions=300, seed=5)
    client = Client(tls_server.address, 7, timeout=SOCKET_TIMEOUT,
                    ssl_context=_context(pki, "agency-7"))
    summary = client.send_folder(data)
    tls_server.stop()
    assert summary.retries == 0
    stored = decode(tls_server.sink.durable)
    assert as_multisets(stored_rows(stored)) == as_multisets(expected_rows(data))
    assert [db.batch_msg for db in stored if isinstance(db.batch_msg, Finished)] == [Finished(7)]


def test_finished_for_another_agency_than_the_certificate_names_is_failed(tls_server, pki,
                                                                         caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    with _tls_wire(tls_server.address, _context(pki, "agency-7")) as sock:
        sock.sendall(numbered_batch(1) + finished_frame(8))
        got = b""
        while len(got) < 10:
            got += sock.recv(10 - len(got))
        assert got == SUCCESS + FAIL
        sock.sendall(finished_frame(7))
        assert _recv_until_closed(sock) == SUCCESS
    tls_server.stop()
    inner = [decode_frame(f).batch_msg for f in tls_server.sink.durable]
    assert inner[1:] == [Finished(7)]
    assert any("FINISHED for agency 8 from a connection whose certificate names agency 7"
               in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("who", [None, "stranger-7", "nobody"],
                         ids=["no-certificate", "another-ca", "no-agency-in-cn"])
def test_a_client_without_a_valid_agency_certificate_is_refused(tls_server, pki, who):
    assert _refused(tls_server.address, _context(pki, who))
    with _tls_wire(tls_server.address, _context(pki, "agency-7")) as sock:   # others go on
        sock.sendall(numbered_batch(2))
        assert sock.recv(5) == SUCCESS
    tls_server.stop()
    assert len(tls_server.sink.durable) == 1


def test_a_plaintext_client_gets_nothing_from_a_tls_server(tls_server):
    with socket.create_connection(tls_server.address, timeout=SOCKET_TIMEOUT) as sock:
        try:
            sock.sendall(numbered_batch(1))
            answer = sock.recv(5)
        except ConnectionResetError:
            answer = b""
        assert answer[:5] not in (SUCCESS, FAIL)
    tls_server.stop()
    assert tls_server.sink.durable == []


def test_a_client_that_does_not_trust_the_server_stops_at_once(tls_server, pki, tmp_path):
    (tmp_path / "stores").mkdir()
    wrong_ca = client_context(pki["other-ca"][0], *pki["agency-7"])
    with pytest.raises(ClientError, match="^TLS with 127.0.0.1:[0-9]+: "):
        Client(tls_server.address, 7, timeout=SOCKET_TIMEOUT, ssl_context=wrong_ca,
               connect_attempts=3).send_folder(tmp_path)


@needs_sigterm
def test_fastframe_serve_and_send_over_mutual_tls(pki, tmp_path):
    import subprocess

    from fastframe.datagen import generate
    from fastframe.sinks.file import read_frames
    from helpers_system import free_port
    from test_faults import fastframe_command, stop_process, subprocess_env, wait_for_log

    data = tmp_path / "data"
    generate(data, transactions=200, seed=6)
    port, sink, log = free_port(), tmp_path / "sink.bin", tmp_path / "serve.log"
    cert, key = pki["server"]
    with open(log, "wb") as f:
        serve = subprocess.Popen(
            fastframe_command("serve", "--port", str(port), "--sink", f"file:{sink}",
                              "--fsync", "never", "--tls-cert", cert, "--tls-key", key,
                              "--tls-client-ca", pki["ca"][0]),
            stdout=f, stderr=subprocess.STDOUT, env=subprocess_env())
    try:
        wait_for_log(log, "action: listen | result: success")
        assert "| tls: on |" in log.read_text()
        sent = subprocess.run(
            fastframe_command("send", str(data), "--server", f"127.0.0.1:{port}",
                              "--agency-id", "7", "--tls-ca", pki["ca"][0],
                              "--tls-cert", pki["agency-7"][0], "--tls-key", pki["agency-7"][1]),
            capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert sent.returncode == 0, sent.stderr
        serve.terminate()
        assert serve.wait(60) == 0
    finally:
        stop_process(serve)
    finished = [decode_frame(bytes(f)).batch_msg for f in read_frames(sink)]
    assert finished[-1] == Finished(7)


@pytest.mark.parametrize("command", ["serve", "send"])
def test_unreadable_tls_files_are_one_line_and_exit_2(tmp_path, command):
    import subprocess

    from test_faults import fastframe_command, subprocess_env

    missing = str(tmp_path / "missing.pem")
    args = (["serve", "--port", "0", "--sink", f"file:{tmp_path / 'sink.bin'}",
             "--tls-cert", missing, "--tls-key", missing] if command == "serve" else
            ["send", str(tmp_path), "--agency-id", "1", "--tls-ca", missing])
    done = subprocess.run(fastframe_command(*args), capture_output=True, text=True,
                          env=subprocess_env(), timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "TLS files" in done.stderr, done.stderr
