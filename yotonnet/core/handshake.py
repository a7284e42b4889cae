"""Proofs exchanged while a link is set up: who is the peer, and is it who we dialled?

Sans-IO: no Twisted import. Both ends put a fresh random *nonce* in their
HELLO. The dialler then proves a credential to the listener, and the
listener proves the same credential back in its welcome, each proof an HMAC
over a transcript that names both nonces, both node ids and the method. So a
secret never crosses the wire: a local user who binds the port a node left
free, or any other impostor, learns nothing it can replay, and the dialler
sees that the peer could not prove the credential before it sends anything
else.

* ``secret``: this OS user's local secret (:mod:`yotonnet.security.localsecret`).
* ``token``: a shared token; the key is its SHA-256, which is what a tokens
  file's checker keeps.
* ``password``: a salted challenge-response in the manner of SCRAM
  (RFC 5802) over scrypt. The listener sends the user's salt and scrypt
  parameters; the dialler derives the salted password and answers
  ``ClientKey XOR HMAC(StoredKey, transcript)``; the listener, which keeps
  only ``StoredKey = SHA-256(ClientKey)`` and ``ServerKey``, checks it with
  two HMACs and answers with ``HMAC(ServerKey, transcript)``. The scrypt is
  the dialler's work: a listener spends no more on a wrong password than on
  any other bad proof, however many arrive, and its passwords file cannot
  be replayed as a password.
* ``certificate``: a TLS client certificate; the TLS layer already proved it.
* ``none``: nothing to prove (listeners that allow anonymous peers).

The messages are CONTROL frames holding OBJECT lists; :func:`parse_auth`,
:func:`parse_challenge` and :func:`parse_welcome` check their shape and
raise ValueError saying what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any, NamedTuple

__all__ = [
    "METHODS",
    "NONCE_BYTES",
    "new_nonce",
    "check_nonce",
    "key_proof",
    "PasswordVerifier",
    "salted_password",
    "client_password_proof",
    "parse_auth",
    "parse_challenge",
    "parse_welcome",
]

SECRET, TOKEN, PASSWORD, CERTIFICATE, NONE = "secret", "token", "password", "certificate", "none"
#: every method, in the order a dialler prefers them when it holds several
METHODS = (TOKEN, PASSWORD, CERTIFICATE, SECRET, NONE)
#: what a listener announces it takes anonymous peers with
ANONYMOUS = "anonymous"
NONCE_BYTES = 16
_LABEL = "yotonnet-auth-2"
_PROOF_HEX = 64
#: scrypt parameters a password challenge may ask of a dialler (work it must do)
SCRYPT_LIMITS = {"n": (2, 2**20), "r": (1, 32), "p": (1, 16)}
_SCRYPT_MAXMEM = 256 * 1024 * 1024


def new_nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def check_nonce(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 2 * NONCE_BYTES:
        raise ValueError(f"HELLO nonce must be {2 * NONCE_BYTES} hex characters")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError("HELLO nonce must be hex") from None
    return value


class Transcript(NamedTuple):
    """What every proof of one handshake is bound to."""

    method: str
    dialler_nonce: str
    listener_nonce: str
    dialler_id: int
    listener_id: int

    def text(self, role: str, extra: str = "") -> bytes:
        return (
            f"{_LABEL}|{role}|{self.method}|{self.dialler_nonce}|{self.listener_nonce}|"
            f"{self.dialler_id:016x}|{self.listener_id:016x}|{extra}"
        ).encode()


def key_proof(key: bytes, transcript: Transcript, role: str) -> str:
    """The proof that ``role`` ("dialler" or "listener") knows ``key`` (secret, token)."""
    return hmac.new(key, transcript.text(role), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(a.encode(), b.encode())


# --- passwords


def salted_password(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)


def _client_key(salted: bytes) -> bytes:
    return hmac.new(salted, b"Client Key", hashlib.sha256).digest()


def _server_key(salted: bytes) -> bytes:
    return hmac.new(salted, b"Server Key", hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


class PasswordVerifier(NamedTuple):
    """What a listener keeps of one password: enough to check a proof, not to make one."""

    n: int
    r: int
    p: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_salted(cls, salted: bytes, salt: bytes, n: int, r: int, p: int) -> PasswordVerifier:
        client_key = _client_key(salted)
        return cls(n, r, p, salt, hashlib.sha256(client_key).digest(), _server_key(salted))

    def _bound(self, transcript: Transcript, user: str) -> bytes:
        return transcript.text("password", f"{user}|{self.salt.hex()}|{self.n}|{self.r}|{self.p}")

    def check(self, transcript: Transcript, user: str, proof: str) -> bool:
        """Whether ``proof`` (hex) shows the dialler knows the password."""
        try:
            given = bytes.fromhex(proof)
        except ValueError:
            return False
        if len(given) != 32:
            return False
        signature = hmac.new(self.stored_key, self._bound(transcript, user), hashlib.sha256)
        client_key = _xor(given, signature.digest())
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key)

    def server_proof(self, transcript: Transcript, user: str) -> str:
        return hmac.new(self.server_key, self._bound(transcript, user), hashlib.sha256).hexdigest()


def client_password_proof(
    salted: bytes, challenge: Challenge, transcript: Transcript, user: str
) -> tuple[str, str]:
    """(the dialler's proof, the listener proof it must expect back)."""
    verifier = PasswordVerifier.from_salted(
        salted, challenge.salt, challenge.n, challenge.r, challenge.p
    )
    bound = verifier._bound(transcript, user)
    signature = hmac.new(verifier.stored_key, bound, hashlib.sha256).digest()
    proof = _xor(_client_key(salted), signature).hex()
    return proof, verifier.server_proof(transcript, user)


# --- messages


class Auth(NamedTuple):
    """A dialler's ``["auth", method, value]``: a proof, a user name, or nothing."""

    method: str
    value: str


class Challenge(NamedTuple):
    salt: bytes
    n: int
    r: int
    p: int


class Welcome(NamedTuple):
    """The listener's verdict: the user it took us for ("" anonymous), and its proof."""

    user: str
    proof: str


def _proof_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != _PROOF_HEX:
        raise ValueError(f"{what} must be {_PROOF_HEX} hex characters")
    return value


def parse_auth(message: Any) -> Auth:
    if not isinstance(message, list) or len(message) not in (2, 3) or message[0] != "auth":
        raise ValueError("expected ['auth', method, value] after the HELLO")
    method = message[1]
    value = message[2] if len(message) == 3 else ""
    if method in (SECRET, TOKEN, "password-proof"):
        return Auth(method, _proof_text(value, f"the {method} proof"))
    if method == PASSWORD:
        if not isinstance(value, str) or not 0 < len(value) <= 256 or not value.isprintable():
            raise ValueError("a password login names a printable user of at most 256 characters")
        return Auth(method, value)
    if method in (CERTIFICATE, NONE):
        return Auth(method, "")
    raise ValueError(f"unknown authentication method {method!r}")


def challenge_message(challenge: Challenge) -> list:
    return [
        "challenge", base64.b64encode(challenge.salt).decode(), challenge.n, challenge.r,
        challenge.p,
    ]


def parse_challenge(message: Any) -> Challenge:
    try:
        kind, salt, n, r, p = message
        if kind != "challenge":
            raise ValueError
        salt_bytes = base64.b64decode(salt, validate=True)
    except (ValueError, TypeError):
        raise ValueError("malformed password challenge") from None
    for name, value in (("n", n), ("r", r), ("p", p)):
        low, high = SCRYPT_LIMITS[name]
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"password challenge asks scrypt {name}={value!r}, out of range")
    if n & (n - 1) or not 8 <= len(salt_bytes) <= 64:
        raise ValueError("password challenge has a bad scrypt n or salt")
    return Challenge(salt_bytes, n, r, p)


def welcome_message(welcome: Welcome) -> list:
    return ["welcome", welcome.user, welcome.proof]


def parse_welcome(message: Any) -> Welcome:
    if not isinstance(message, list) or len(message) != 3 or message[0] != "welcome":
        raise ValueError("expected the listener's welcome")
    _, user, proof = message
    if not isinstance(user, str) or len(user) > 256:
        raise ValueError("malformed welcome")
    if proof != "":
        _proof_text(proof, "the listener's proof")
    return Welcome(user, proof)
