"""Attack: many short sessions grow the metrics for ever.

The average spend per task kept a total for every session that ever signed, in
memory, and summed all of them on each signature: a planner opening session
after session grew the signer's memory and the cost of every Sign without
bound. The average is now two running totals per asset, and only a bounded
set of recent sessions is remembered (closed sessions leave it at once); the
exported series do not grow with sessions either. Real token and store; the
service is called directly, as the gRPC servicer does.
"""

from __future__ import annotations

import time

from paywarden.signer.api.startup import load_packs
from paywarden.signer.core.service import SigningService
from paywarden.signer.core.views import SignStatus
from paywarden.signer.metrics import Metrics
from prometheus_client import generate_latest

from tests.attacks.kit import AGENT, PLANNER
from tests.helpers import Stack
from tests.support.intents import intent_fields

CAP = 5


def _series(metrics: Metrics) -> int:
    text = generate_latest(metrics.registry).decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _pay(service: SigningService, session_id: str) -> None:
    result = service.sign(
        AGENT,
        intent_fields(
            session_id,
            payee="acme-data",
            amount="1.00",
            purpose="a task",
            expires_at=int(time.time()) + 120,
        ),
    )
    assert result.status is SignStatus.SIGNED


def test_many_sessions_keep_the_metrics_bounded(stack: Stack) -> None:
    metrics = Metrics(max_tracked_sessions=CAP)
    service = SigningService(
        stack.config, stack.store, stack.hsm, load_packs(stack.config), metrics=metrics
    )
    series: list[int] = []
    for i in range(40):
        view = service.open_session(PLANNER, "agent-1", "a task", [("USD", "10.00")], 600, [])
        _pay(service, view.record.id)
        _pay(service, view.record.id)
        if i % 2:
            service.close_session(PLANNER, view.record.id)
        assert metrics.tracked_sessions() <= CAP
        series.append(_series(metrics))
    # closed sessions are forgotten at once; open ones only up to the cap
    assert metrics.tracked_sessions() <= CAP
    # the exported series are the same after 40 sessions as after the first
    assert series[-1] == series[0]
    # and the average is still right: every session signed 2 x 1.00
    average = metrics.registry.get_sample_value(
        "paywarden_average_spend_per_task", {"asset": "USD"}
    )
    assert average == 2.0
