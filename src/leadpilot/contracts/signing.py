"""E-signature providers: one small interface, chosen by ``LEADPILOT_SIGNING_PROVIDER``; ``local`` built in.

A provider sends a contract's document (identified by its SHA-256 document hash) for signature and gives
back a reference and a signing URL with a token; the signer's answer comes back as a callback carrying the
token, which the provider verifies against the document hash of the contract *as it is now*: a token made
for other terms (the document changed after sending) or altered in transit does not verify.

The local provider needs no outside service. Its token is ``<reference>.<nonce>.<mac>`` where ``mac`` is
HMAC-SHA256, keyed from the app's secret key, over the reference, the nonce and the document hash. Only
the token's SHA-256 is stored (on the contract row), and it is cleared once used, so a token signs once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.contracts.tables import Contract

SIGNING_ROUTE = "/api/v1/signing/{token}"
_TOKEN = re.compile(r"^(local-[0-9a-f]{24})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$")


class SigningError(Exception):
    """A signing token or callback that does not verify; ``reason`` says why in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SigningDocument:
    """What is sent for signature: the contract's number, its document hash and when the link expires."""

    contract_id: int
    number: str
    document_hash: str
    expires_at: datetime


@dataclass(frozen=True)
class SigningEnvelope:
    """A provider's answer to ``send``: its reference, the signing URL and the one-time token in it."""

    reference: str
    url: str
    token: str


def token_digest(token: str) -> str:
    """The SHA-256 of a token as stored on the contract (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


class SigningProvider(ABC):
    """An e-signature service: send a document, ask its status, verify the signer's callback."""

    name: str = ""

    @abstractmethod
    def send(self, document: SigningDocument) -> SigningEnvelope:
        """Send a document for signature; returns the provider's reference, the signing URL and token."""

    @abstractmethod
    def status(self, reference: str) -> str | None:
        """The provider's view of a sent document (a ``ContractStatus`` value), None when unknown."""

    @abstractmethod
    def reference_of(self, token: str) -> str:
        """The reference a callback token claims to be about (not yet trusted); SigningError when malformed."""

    @abstractmethod
    def verify_callback(self, token: str, *, document_hash: str) -> str:
        """Check a callback token against the document hash; returns its reference or raises SigningError."""


class LocalSigningProvider(SigningProvider):
    """The built-in provider: one-time HMAC-signed links served by leadpilot itself (no outside service)."""

    name = "local"

    def __init__(self, secret_key: str, session: Session | None = None) -> None:
        if not secret_key:
            raise ValueError("the local signing provider needs the app's secret key")
        # A key of its own, derived from the app's secret: a JWT key leak alone does not sign contracts.
        self._key = hmac.new(secret_key.encode(), b"leadpilot-contract-signing-v1", hashlib.sha256).digest()
        self._session = session

    def _mac(self, reference: str, nonce: str, document_hash: str) -> str:
        message = f"{reference}|{nonce}|{document_hash}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def send(self, document: SigningDocument) -> SigningEnvelope:
        """Make a fresh reference and one-time token for the document; the URL is leadpilot's signing route."""
        reference = f"local-{secrets.token_hex(12)}"
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        token = f"{reference}.{nonce}.{self._mac(reference, nonce, document.document_hash)}"
        return SigningEnvelope(reference=reference, url=SIGNING_ROUTE.format(token=token), token=token)

    def status(self, reference: str) -> str | None:
        """The contract's status for a reference (the local provider keeps its state on the contract row)."""
        if self._session is None:
            return None
        return self._session.scalar(select(Contract.status).where(Contract.provider_ref == reference))

    def reference_of(self, token: str) -> str:
        """The reference part of a well-formed token."""
        match = _TOKEN.match(token or "")
        if match is None:
            raise SigningError("the signing token is malformed")
        return match.group(1)

    def verify_callback(self, token: str, *, document_hash: str) -> str:
        """Check the token's HMAC over the document hash (constant time); returns the reference."""
        match = _TOKEN.match(token or "")
        if match is None:
            raise SigningError("the signing token is malformed")
        reference, nonce, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(reference, nonce, document_hash)):
            raise SigningError("the signing token does not match the contract's document")
        return reference


PROVIDERS: dict[str, type[LocalSigningProvider]] = {"local": LocalSigningProvider}


def make_provider(name: str, *, secret_key: str, session: Session | None = None) -> SigningProvider:
    """The provider configured by ``LEADPILOT_SIGNING_PROVIDER``."""
    try:
        cls = PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown signing provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None
    return cls(secret_key, session)
