"""What an open payment mandate bounds, read from its disclosed claims (AP2 v0.2).

Units are explicit and converted once: ``payment.amount_range`` and a preset
``payment_amount`` are integer MINOR units; ``payment.budget.max`` is a JSON number in MAJOR
units (AP2's example ``1000.00`` USD), turned into minor units by :func:`major_to_minor` with
the currency's decimals, exactly or not at all. A constraint type, or a member, this reader
does not know is refused: the user signed it, and we could not enforce it.
"""

from __future__ import annotations

import datetime
import decimal
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from paywarden.verify import mandate_errors as E
from paywarden.verify.sdjwt import SD, is_withheld

MAX_MINOR = 10**18  # any amount, in minor units (after conversion): fail closed above
MAX_USES = 1_000_000  # payment.agent_recurrence max_occurrences
MAX_TIME = 2**53  # any time claim or date, epoch seconds (exact in every JSON reader)
MAX_DECIMALS = 18
DAY = 86_400
SPACING = {
    "ON_DEMAND": 0,
    "DAILY": DAY,
    "WEEKLY": 7 * DAY,
    "BIWEEKLY": 14 * DAY,
    "MONTHLY": 28 * DAY,
    "QUARTERLY": 89 * DAY,
    "ANNUALLY": 365 * DAY,
}
ITEM_MEMBERS = frozenset(
    {"vct", "constraints", "cnf", "iat", "exp", "payee", "payment_amount"}
    | {"execution_date", "risk_data"}
)
_MERCHANT = frozenset({"id", "name", "website", SD})  # SD: a withheld name or website
_MEMBERS = {
    "payment.amount_range": ({"currency", "max"}, {"min"}),
    "payment.budget": ({"currency", "max"}, set()),
    "payment.agent_recurrence": ({"frequency"}, {"max_occurrences"}),
    "payment.allowed_payees": ({"allowed"}, set()),
    "payment.execution_date": (set(), {"not_before", "not_after"}),
    "payment.reference": ({"conditional_transaction_id"}, set()),
}
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DECIMAL = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40})?")
_IDENTIFIER = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no space


@dataclass(frozen=True, slots=True)
class Constraints:
    """The mandate's disclosed constraints, typed; amounts in MINOR units."""

    currency: str  # ISO 4217 code as in the mandate
    min_minor: int | None
    max_minor: int | None
    budget_minor: int | None  # converted from major units with the currency's decimals
    max_uses: int | None
    spacing_seconds: int | None
    payees: tuple[str, ...] | None  # None: no allow-list constraint; () never (refused)
    not_before: int | None  # execution date window, epoch seconds
    not_after: int | None
    reference: str | None

    @property
    def total_minor(self) -> int | None:
        """The most the mandate lets be spent in all: its budget, or else its per-payment
        max times its uses (None: it bounds no total, and is refused)."""
        if self.budget_minor is not None:
            return self.budget_minor
        if self.max_minor is not None and self.max_uses is not None:
            return self.max_minor * self.max_uses
        return None


def _invalid(message: str) -> E.MandateError:
    return E.unresolved(E.CONSTRAINT_INVALID, message)


def major_to_minor(amount: str | int | float | Decimal, decimals: int) -> int:
    """``amount`` major units as an integer of minor units (``decimals`` of them to one
    major unit), exactly: 100.00 USD (2) is 10000, 1000 JPY (0) is 1000, 1.005 USD is
    refused (no rounding, ever), as are negative, non-finite and absurdly large amounts."""
    if type(decimals) is not int or not 0 <= decimals <= MAX_DECIMALS:
        raise _invalid(f"a currency has 0 to {MAX_DECIMALS} decimals, not {E.shown(decimals)}")
    if isinstance(amount, bool) or not isinstance(amount, str | int | float | Decimal):
        raise _invalid(f"the amount {E.shown(amount)} is not a number")
    if isinstance(amount, str) and not _DECIMAL.fullmatch(amount):
        raise _invalid(f"the amount {E.shown(amount)} is not a plain decimal number")
    try:
        value = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
    except (decimal.DecimalException, ValueError):
        raise _invalid(f"the amount {E.shown(amount)} is not a decimal number") from None
    if not value.is_finite() or value < 0 or value.adjusted() > 30:
        raise _invalid(f"the amount {E.shown(amount)} is not a finite amount >= 0")
    try:
        with decimal.localcontext() as context:
            context.prec = 80
            context.traps[decimal.Inexact] = True
            scaled = value.scaleb(decimals)
            exact = scaled == scaled.to_integral_value()
    except decimal.DecimalException:  # more significant digits than any amount has
        exact = False
    if not exact:
        raise _invalid(f"the amount {E.shown(amount)} has more than {decimals} fractional digits")
    minor = int(scaled)
    if minor > MAX_MINOR:
        raise _invalid(f"the amount {E.shown(amount)} is too large")
    return minor


def _minor(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_MINOR:
        raise _invalid(f"{what} is not an integer of minor units")
    return value


def _identifier(value: object, what: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise _invalid(f"{what} is not 1 to 256 printable ASCII characters without spaces")
    return value


def epoch(value: int, what: str) -> int:
    """``value`` (epoch seconds) if within 0 to 2**53, else the chain is malformed."""
    if not 0 <= value <= MAX_TIME:
        raise E.credential(E.MALFORMED, f"{what} is not a time between 0 and 2**53")
    return value


def _text(value: object, what: str, limit: int = 512) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise _invalid(f"{what} is not a string of 1 to {limit} characters")
    return value


def _instant(value: object, what: str) -> datetime.datetime:
    if not isinstance(value, str) or not _DATE_TIME.fullmatch(value):
        raise _invalid(f"{what} is not an RFC 3339 date-time with a zone")
    try:
        return datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"{what} is not a valid date-time") from None


def _payee(entry: object, what: str) -> str:
    if not isinstance(entry, dict) or set(entry) - _MERCHANT:
        raise E.unresolved(E.CONSTRAINT_UNKNOWN, f"{what} is not a merchant (id, name, website)")
    return _identifier(entry.get("id"), f"{what}'s id")


class _Terms:
    def __init__(self) -> None:
        self.currencies: set[str] = set()
        self.min: int | None = None
        self.max: int | None = None
        self.budget: Any = None
        self.uses: int | None = None
        self.spacing: int | None = None
        self.payees: tuple[str, ...] | None = None
        self.not_before: int | None = None
        self.not_after: int | None = None
        self.reference: str | None = None

    def currency(self, value: object, what: str) -> None:
        self.currencies.add(_text(value, f"{what}'s currency", 16))

    def range(self, low: int | None, high: int | None) -> None:
        if low is not None:
            self.min = low if self.min is None else max(self.min, low)
        if high is not None:
            self.max = high if self.max is None else min(self.max, high)

    def window(self, low: int | None, high: int | None) -> None:
        if low is not None:
            self.not_before = low if self.not_before is None else max(self.not_before, low)
        if high is not None:
            self.not_after = high if self.not_after is None else min(self.not_after, high)

    def allow(self, payees: tuple[str, ...]) -> None:
        if self.payees is not None:
            payees = tuple(p for p in payees if p in self.payees)
        self.payees = payees

    def constraint(self, c: object) -> None:
        if is_withheld(c):
            raise E.unresolved(E.CONSTRAINT_UNKNOWN, "a constraint is withheld (not disclosed)")
        kind = c.get("type") if isinstance(c, dict) else None
        if not isinstance(c, dict) or not isinstance(kind, str) or kind not in _MEMBERS:
            raise E.unresolved(
                E.CONSTRAINT_UNKNOWN, f"constraint type {E.shown(kind)} is not supported"
            )
        required, optional = _MEMBERS[kind]
        members = set(c) - {"type"}
        if not required <= members or members - required - optional:
            raise E.unresolved(
                E.CONSTRAINT_UNKNOWN, f"{kind}: members {E.shown(sorted(members))} are not its own"
            )
        getattr(self, "on_" + kind.removeprefix("payment."))(c)

    def on_amount_range(self, c: Mapping[str, Any]) -> None:
        self.currency(c["currency"], "payment.amount_range")
        high = _minor(c["max"], "payment.amount_range max")
        low = _minor(c["min"], "payment.amount_range min") if "min" in c else None
        if low is not None and low > high:
            raise _invalid("payment.amount_range min is above its max")
        self.range(low, high)

    def on_budget(self, c: Mapping[str, Any]) -> None:
        self.currency(c["currency"], "payment.budget")
        if isinstance(c["max"], bool) or not isinstance(c["max"], int | Decimal):
            raise _invalid("payment.budget max is not a JSON number")
        self.budget = c["max"]

    def on_agent_recurrence(self, c: Mapping[str, Any]) -> None:
        frequency = c["frequency"]
        if not isinstance(frequency, str) or frequency not in SPACING:
            raise _invalid(f"payment.agent_recurrence frequency {E.shown(frequency)} is not known")
        self.spacing = SPACING[frequency]
        if "max_occurrences" in c:
            uses = c["max_occurrences"]
            if type(uses) is not int or not 1 <= uses <= MAX_USES:
                raise _invalid(
                    f"payment.agent_recurrence max_occurrences is not an integer 1 to {MAX_USES}"
                )
            self.uses = uses

    def on_allowed_payees(self, c: Mapping[str, Any]) -> None:
        allowed = c["allowed"]
        if not isinstance(allowed, list):
            raise _invalid("payment.allowed_payees allowed is not an array")
        shown = [e for e in allowed if not is_withheld(e)]
        if not shown:
            raise E.unresolved(
                E.ALLOWLIST_WITHHELD, "payment.allowed_payees discloses no allowed payee"
            )
        payees = tuple(dict.fromkeys(_payee(e, "an allowed payee") for e in shown))
        self.allow(payees)

    def on_execution_date(self, c: Mapping[str, Any]) -> None:
        low = high = None
        if "not_before" in c:
            at = _instant(c["not_before"], "payment.execution_date not_before")
            low = epoch(int(at.timestamp()) + (1 if at.microsecond else 0), "not_before")
        if "not_after" in c:
            at = _instant(c["not_after"], "payment.execution_date not_after")
            high = epoch(int(at.timestamp()), "not_after")
        self.window(low, high)

    def on_reference(self, c: Mapping[str, Any]) -> None:
        if self.reference is not None:
            raise _invalid("payment.reference appears twice")
        self.reference = _identifier(c["conditional_transaction_id"], "conditional_transaction_id")

    def presets(self, item: Mapping[str, Any]) -> None:
        if "payee" in item:
            self.allow((_payee(item["payee"], "the preset payee"),))
        if "payment_amount" in item:
            amount = item["payment_amount"]
            if not isinstance(amount, dict) or set(amount) != {"amount", "currency"}:
                raise _invalid("the preset payment_amount is not {amount, currency}")
            self.currency(amount["currency"], "payment_amount")
            value = _minor(amount["amount"], "payment_amount amount")
            self.range(value, value)
        if "execution_date" in item:
            day = item["execution_date"]
            if not isinstance(day, str) or not _DATE.fullmatch(day):
                raise _invalid("the preset execution_date is not an RFC 3339 full-date")
            try:
                start = datetime.datetime.fromisoformat(day + "T00:00:00+00:00")
            except ValueError:
                raise _invalid("the preset execution_date is not a valid date") from None
            first = epoch(int(start.timestamp()), "the preset execution_date")
            self.window(first, first + DAY - 1)


def constraints(item: Mapping[str, Any], decimals: Callable[[str], int | None]) -> Constraints:
    """The bounds of a mandate item (disclosures resolved, withheld parts still marked)."""
    unknown = sorted(set(item) - ITEM_MEMBERS)
    if unknown:
        raise E.unresolved(
            E.CONSTRAINT_UNKNOWN, f"mandate members not supported: {E.shown(unknown)}"
        )
    listed = item.get("constraints")
    if not isinstance(listed, list):
        raise _invalid("the mandate has no constraints array")
    terms, kinds = _Terms(), []
    for c in listed:
        terms.constraint(c)
        kinds.append(c["type"])
    if len(set(kinds)) != len(kinds):
        raise _invalid("a constraint type appears twice")
    terms.presets(item)
    return _bounded(terms, decimals)


def _bounded(terms: _Terms, decimals: Callable[[str], int | None]) -> Constraints:
    if len(terms.currencies) > 1:
        raise _invalid(
            f"the mandate's amounts are in several currencies: {E.shown(sorted(terms.currencies))}"
        )
    if not terms.currencies:
        raise E.unresolved(E.UNBOUNDED, "the mandate bounds no amount")
    (currency,) = terms.currencies
    places = decimals(currency)
    if type(places) is not int:
        raise _invalid(f"the currency {E.shown(currency)} is not one this signer knows")
    budget = None if terms.budget is None else major_to_minor(terms.budget, places)
    if terms.min is not None and terms.max is not None and terms.min > terms.max:
        raise _invalid("the mandate's amount bounds leave no amount")
    if terms.not_before is not None and terms.not_after is not None:
        if terms.not_before > terms.not_after:
            raise _invalid("the mandate's execution window is empty")
    if terms.payees == ():
        raise _invalid("the preset payee is not among the allowed payees")
    bounds = Constraints(
        currency=currency,
        min_minor=terms.min,
        max_minor=terms.max,
        budget_minor=budget,
        max_uses=terms.uses,
        spacing_seconds=terms.spacing,
        payees=terms.payees,
        not_before=terms.not_before,
        not_after=terms.not_after,
        reference=terms.reference,
    )
    if bounds.total_minor is None:
        raise E.unresolved(
            E.UNBOUNDED, "the mandate bounds no total (no budget, nor max with max_occurrences)"
        )
    return bounds
