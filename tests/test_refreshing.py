"""``Refresher``: the one reload policy of the store's in-memory views (the freezes and
the revocations in force): at once after this process changed the store, at least every
``max_age`` seconds otherwise, and, for a view that fails closed, unusable after a failed
reload until one succeeds."""

from __future__ import annotations

import pytest
from paywarden.signer.core.refreshing import Refresher
from paywarden.signer.store.records import StoreError


class _Store:
    """A generation, a clock and a reload that counts its calls (or fails when told)."""

    def __init__(self) -> None:
        self.generation = 0
        self.now = 0.0
        self.reloads = 0
        self.failing = False

    def reload(self) -> None:
        if self.failing:
            raise StoreError("the store cannot be read")
        self.reloads += 1


def _refresher(store: _Store, *, fail_closed: bool) -> Refresher:
    return Refresher(
        store.reload, lambda: store.generation, 10.0, lambda: store.now, fail_closed=fail_closed
    )


@pytest.mark.parametrize("fail_closed", [False, True])
def test_a_view_reloads_when_the_generation_moves_or_it_is_old(fail_closed: bool) -> None:
    store = _Store()
    view = _refresher(store, fail_closed=fail_closed)
    assert not view.loaded
    for _ in range(3):
        view.refresh()
    assert (store.reloads, view.loaded) == (1, True)
    store.generation += 1  # this process changed the store
    view.refresh()
    view.invalidate()  # or says so
    view.refresh()
    assert store.reloads == 3
    store.now += 9.9
    view.refresh()
    assert store.reloads == 3  # young enough
    store.now += 0.1
    view.refresh()
    assert store.reloads == 4


@pytest.mark.parametrize("fail_closed", [False, True])
def test_a_failed_reload_leaves_the_view_unloaded_and_is_tried_again(fail_closed: bool) -> None:
    store = _Store()
    view = _refresher(store, fail_closed=fail_closed)
    view.refresh()
    store.failing, store.now = True, 60.0
    with pytest.raises(StoreError):
        view.refresh()
    assert not view.loaded
    store.failing = False
    view.refresh()
    assert (store.reloads, view.loaded) == (2, True)
