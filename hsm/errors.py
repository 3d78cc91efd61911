"""Errors raised by the HSM layer. Messages never contain a PIN."""


class HsmError(Exception):
    """Base class of every HSM failure."""


class HsmUnavailable(HsmError):
    """The token cannot be used right now (not found, login failed, PKCS#11 error)."""


class KeyNotFound(HsmError):
    """No key pair with this label and version on the token."""


class UnsafeKey(HsmError):
    """A key on the token is extractable or not sensitive: it is refused."""


class HsmPinRejected(HsmUnavailable):
    """The token refused the PIN (incorrect, locked, expired): never retried."""
