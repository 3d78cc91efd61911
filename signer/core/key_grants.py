"""Key scoping: a policy pack may grant only keys that exist and are active.

Packs name which key may sign which asset for which agents (``[assets.X] keys``), by
exact version (``payments.v2``: only that version) or by label (``payments``: its active
version when the payment is signed). :func:`check_grants` refuses, at load, a pack
that grants a key that is not a payment key of this signer or not active; the Sign path
then refuses a version that stopped being active since (``KEY_NOT_ACTIVE``), so a pack
that names an exact version keeps granting only that version after a rotation: its
agents' payments are refused until the pack names the label or the new version, and
the pack no longer loads (restart or reload) until then.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from paywarden.policy import PackError, PolicyPack
from paywarden.policy.vocabulary import KeyProfile, KeyState
from paywarden.signer.core.keys import label_of
from paywarden.signer.store.records import KeyVersion


def check_grants(
    packs: Iterable[PolicyPack], versions: Iterable[KeyVersion], configured: Collection[str]
) -> None:
    """Raises :class:`PackError`, naming the pack, the asset and the key, for a pack that
    grants a key that is not a payment key of this signer or not active: an exact
    version must be active, a label must have an active version. A configured key the
    store has not registered yet (its token is not up) counts as active until it is."""
    stored = {v.key_id: v for v in versions}
    managed = {v.label for v in stored.values()}
    pending = {k for k in configured if k not in stored and label_of(k) not in managed}
    active_labels = {v.label for v in stored.values() if v.state is KeyState.ACTIVE}
    active_labels |= {label_of(k) for k in pending}
    for pack in packs:
        for asset, rules in sorted(pack.model.assets.items()):
            for key in rules.keys:
                why = _refusal(key, stored, pending, active_labels, managed)
                if why is not None:
                    raise PackError(
                        f"{pack.path}: pack {pack.id} asset {asset} grants key {key}, which {why}"
                    )


def check_profiles(
    packs: Iterable[PolicyPack], profiles: Mapping[str, KeyProfile], x402_assets: Collection[str]
) -> None:
    """Raises :class:`PackError` for a pack that grants an ``x402-exact-evm`` key on an
    asset that is not paid with x402, or a ``jws-es256`` key on one that is: a key
    signs one form of payment, an asset is paid in one form."""
    for pack in packs:
        for asset, rules in sorted(pack.model.assets.items()):
            wanted = KeyProfile.X402_EXACT_EVM if asset in x402_assets else KeyProfile.JWS_ES256
            for key in rules.keys:
                profile = profiles.get(label_of(key), KeyProfile.JWS_ES256)
                if profile is not wanted:
                    raise PackError(
                        f"{pack.path}: pack {pack.id} asset {asset} grants key {key}, a "
                        f"{profile} key, but the asset is paid with {wanted} keys"
                    )


def _refusal(
    key: str,
    stored: dict[str, KeyVersion],
    pending: set[str],
    active_labels: set[str],
    managed: set[str],
) -> str | None:
    if "." in key:
        version = stored.get(key)
        if version is None:
            return None if key in pending else "is not a payment key of this signer"
        if version.state is not KeyState.ACTIVE:
            return f"is {version.state}: grant its label or its active version"
        return None
    if key in active_labels:
        return None
    if key in managed:
        return "has no active version"
    return "is not a payment key label of this signer"
