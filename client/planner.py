"""The planner's client: open a session for an agent, commit its plan, close it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Unpack

from paywarden.client._calls import CLOSE_SESSION, COMMIT_PLAN, GET_SESSION, OPEN_SESSION
from paywarden.client._connection import Connection
from paywarden.client._requests import (
    PlanItem,
    SessionOptions,
    close_request,
    note_close_failure,
    open_request,
    plan_request,
    session_id_request,
)
from paywarden.client.errors import ClientError
from paywarden.v1 import sessions_pb2


class PlannerClient(Connection):
    """A planner's connection to the signer (its certificate names the planner).

    >>> with PlannerClient() as planner, planner.session(  # doctest: +SKIP
    ...     "agent-7", task="Buy the Q3 weather data", budgets={"USD": "50.00"}
    ... ) as session:
    ...     run_agent(session.id)   # the session is closed when the block ends, however
    """

    def open_session(
        self, agent_id: str, **options: Unpack[SessionOptions]
    ) -> sessions_pb2.Session:
        """Opens a session for ``agent_id`` (``task``, ``budgets`` and the other
        :class:`~paywarden.client.SessionOptions`)."""
        return self._call(OPEN_SESSION, open_request(agent_id, **options)).session

    def get_session(self, session_id: str) -> sessions_pb2.Session:
        """A session this planner opened, with its state, spend and plan."""
        return self._call(GET_SESSION, session_id_request(session_id)).session

    def commit_plan(self, session_id: str, items: Iterable[PlanItem]) -> sessions_pb2.Session:
        """Commits the plan of a plan-bound session: from then on only planned payments."""
        return self._call(COMMIT_PLAN, plan_request(session_id, items)).session

    def close_session(self, session_id: str) -> sessions_pb2.Session:
        """Closes a session (closing a closed one changes nothing): every later Sign in it
        is refused."""
        return self._call(CLOSE_SESSION, close_request(session_id)).session

    @contextmanager
    def session(self, agent_id: str, **options: Unpack[SessionOptions]) -> Iterator[PlannerSession]:
        """Opens a session for the block and closes it when the block ends, also when it
        raises (the block's exception stands; a failure to close is added to it as a note)."""
        opened = self.open_session(agent_id, **options)
        handle = PlannerSession(self, opened)
        try:
            yield handle
        except BaseException as error:
            try:
                handle.close()
            except ClientError as close_error:
                note_close_failure(error, close_error, handle.id)
            raise
        handle.close()


class PlannerSession:
    """A session opened by :meth:`PlannerClient.session`; ``state`` is as last read."""

    def __init__(self, planner: PlannerClient, state: sessions_pb2.Session) -> None:
        self._planner = planner
        self.state = state

    @property
    def id(self) -> str:
        """The session id to give the agent."""
        return self.state.session_id

    def refresh(self) -> sessions_pb2.Session:
        """Reads the session again."""
        self.state = self._planner.get_session(self.id)
        return self.state

    def commit_plan(self, items: Iterable[PlanItem]) -> sessions_pb2.Session:
        """Commits the plan of this (plan-bound) session."""
        self.state = self._planner.commit_plan(self.id, items)
        return self.state

    def close(self) -> sessions_pb2.Session:
        """Closes the session now."""
        self.state = self._planner.close_session(self.id)
        return self.state
