"""The payment keys' public halves, for anyone who checks a signature."""

from __future__ import annotations

import json

from paywarden.hsm import Hsm, PublicKeyInfo
from paywarden.signer.errors import Reason, Unavailable


class PublicKeys:
    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm

    def public_keys(self) -> list[PublicKeyInfo]:
        keys = self._hsm.public_keys()
        if not keys:
            raise Unavailable(Reason.HSM_UNAVAILABLE, "the public keys have not been read yet")
        return keys

    def jwks(self) -> str:
        return json.dumps({"keys": [k.jwk() for k in self.public_keys()]}, sort_keys=True)
