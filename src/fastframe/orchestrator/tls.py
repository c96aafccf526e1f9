"""Mutual TLS, opt-in: the contexts, and the agency a client certificate names.

The server presents ``cert``/``key`` and, given ``client_ca``, requires a
client certificate signed by that CA. The certificate's common name names
the agency (``CN=agency-7``): the orchestrator refuses a FINISHED that
carries another agency id. Plaintext stays the default, as the original
client speaks nothing else.
"""
from __future__ import annotations

import re
import ssl
from typing import Any, Mapping, Optional

__all__ = ["server_context", "client_context", "agency_of", "AGENCY_CN"]

AGENCY_CN = re.compile(r"agency-(\d{1,9})")
"""The common name of an agency's client certificate: ``agency-N``."""


def server_context(cert: str, key: str, client_ca: Optional[str] = None) -> ssl.SSLContext:
    """TLS 1.2+ with ``cert``/``key``; with ``client_ca``, client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str, cert: Optional[str] = None,
                   key: Optional[str] = None) -> ssl.SSLContext:
    """TLS 1.2+ trusting ``ca`` for the server (host name checked); ``cert``/``key``
    is the agency's client certificate, for a server that requires one."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def agency_of(cert: Mapping[str, Any]) -> Optional[int]:
    """The agency id of a verified peer certificate (``getpeercert()``), or ``None``.

    ``None`` unless the subject has exactly one common name and it is ``agency-N``.
    """
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    if len(names) != 1:
        return None
    match = AGENCY_CN.fullmatch(names[0])
    return int(match.group(1)) if match else None
