"""What Claude usage costs at list price, from the table in pricing.json beside this module.

The table is written by hand from Anthropic's published prices; its `taken` date says when.
A model the table does not name has no price, and callers say so rather than guess: a wrong
estimate is worse than none. Prices apply to one API response at a time, the way ccusage (the
tool people check their spending with) applies them, so the two agree: in each token category,
the tokens past the long-context threshold are charged at the model's above-threshold rate
when it has one, and a fast-mode response is charged its model's fast multiple.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from typing import Any, Protocol

PER_MILLION = 1_000_000

# Dated model ids (claude-sonnet-4-5-20250929, Vertex's claude-3-5-haiku@20241022) are
# snapshots of the model their family id names, at the same price.
_DATE_SUFFIX = re.compile(r"[-@]\d{8}$")

_RATE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_MAX_REMEMBERED = 1_000  # model ids whose lookup is remembered


class Usage(Protocol):
    """Token counts of one response or a sum of them, as TokenTotals has them: cache_creation
    counts every cache write. An object may also say how many of those were written for one
    hour (cache_creation_1h, priced higher); without it, all are 5-minute writes."""

    @property
    def input(self) -> int: ...
    @property
    def output(self) -> int: ...
    @property
    def cache_read(self) -> int: ...
    @property
    def cache_creation(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    base: Rates
    above: Rates | None  # for the tokens past the threshold, when the model has such a tier
    threshold: int
    fast_multiplier: float | None  # None: the table knows no fast-mode price for it

    def cost(
        self,
        *,
        input: int,
        output: int,
        cache_write_5m: int,
        cache_write_1h: int,
        cache_read: int,
        fast: bool = False,
    ) -> float | None:
        """USD for one response; None when it ran in fast mode and that has no price here."""
        above, threshold = self.above, self.threshold
        if above is None or max(input, output, cache_write_5m, cache_write_1h, cache_read) <= (
            threshold
        ):
            return self.cost_below_threshold(
                input=input,
                output=output,
                cache_write_5m=cache_write_5m,
                cache_write_1h=cache_write_1h,
                cache_read=cache_read,
                fast=fast,
            )
        multiplier = self._multiplier(fast)
        if multiplier is None:
            return None
        base = self.base
        micro = (
            _tiered(input, base.input, above.input, threshold)
            + _tiered(output, base.output, above.output, threshold)
            + _tiered(cache_write_5m, base.cache_write_5m, above.cache_write_5m, threshold)
            + _tiered(cache_write_1h, base.cache_write_1h, above.cache_write_1h, threshold)
            + _tiered(cache_read, base.cache_read, above.cache_read, threshold)
        )
        return micro * multiplier / PER_MILLION

    def cost_below_threshold(
        self,
        *,
        input: int,
        output: int,
        cache_write_5m: int,
        cache_write_1h: int,
        cache_read: int,
        fast: bool = False,
    ) -> float | None:
        """USD at the base rates: for one response, or for the sum of responses that each
        stayed at or below the threshold in every kind (price is linear there)."""
        multiplier = self._multiplier(fast)
        if multiplier is None:
            return None
        base = self.base
        micro = (
            input * base.input
            + output * base.output
            + cache_write_5m * base.cache_write_5m
            + cache_write_1h * base.cache_write_1h
            + cache_read * base.cache_read
        )
        return micro * multiplier / PER_MILLION

    def _multiplier(self, fast: bool) -> float | None:
        if not fast:
            return 1.0
        return self.fast_multiplier


def _tiered(tokens: int, base: float, above: float, threshold: int) -> float:
    if tokens <= threshold:
        return tokens * base
    return threshold * base + (tokens - threshold) * above


@dataclass(frozen=True)
class PriceTable:
    taken: date
    source: str
    threshold: int  # tokens of one kind in one response past which long-context rates apply
    prices: dict[str, Price]  # by model id and by each alias
    _found: dict[str, Price | None] = field(default_factory=dict, repr=False, compare=False)

    def find(self, model: str) -> Price | None:
        """The price of a model id: the id itself, else the family a dated id belongs to.
        Nothing looser: claude-sonnet-4-7 must not pass for claude-sonnet-4."""
        if model in self._found:
            return self._found[model]
        price = self.prices.get(model)
        if price is None:
            family = _DATE_SUFFIX.sub("", model)
            if family != model:
                price = self.prices.get(family)
        if len(self._found) < _MAX_REMEMBERED:
            self._found[model] = price
        return price

    def cost(self, model: str, usage: Usage, *, fast: bool = False) -> float | None:
        """USD for usage of one response by model; None when the model has no price here.
        (For a sum of responses this is exact only below the long-context threshold.)"""
        price = self.find(model)
        if price is None:
            return None
        one_hour = getattr(usage, "cache_creation_1h", 0)
        return price.cost(
            input=usage.input,
            output=usage.output,
            cache_write_5m=usage.cache_creation - one_hour,
            cache_write_1h=one_hour,
            cache_read=usage.cache_read,
            fast=fast,
        )


@cache
def price_table() -> PriceTable:
    """The table shipped with the package, read once."""
    text = resources.files("sessionflow").joinpath("pricing.json").read_text(encoding="utf-8")
    return parse_table(json.loads(text))


def parse_table(data: dict[str, Any]) -> PriceTable:
    """A table from pricing.json's shape; raises ValueError on anything malformed, so a bad
    edit fails the first test run rather than pricing sessions wrong."""
    try:
        threshold = int(data["long_context_threshold_tokens"])
        prices: dict[str, Price] = {}
        for model, entry in data["models"].items():
            above = entry.get("above_threshold")
            fast = entry.get("fast_multiplier")
            price = Price(
                model=model,
                base=_rates(entry),
                above=_rates(above) if above is not None else None,
                threshold=threshold,
                fast_multiplier=float(fast) if fast is not None else None,
            )
            for name in (model, *entry.get("aliases", ())):
                if name in prices:
                    raise ValueError(f"{name!r} is priced twice")
                prices[name] = price
        return PriceTable(
            taken=date.fromisoformat(data["taken"]),
            source=str(data["source"]),
            threshold=threshold,
            prices=prices,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed price table: {exc!r}") from exc


def _rates(entry: dict[str, Any]) -> Rates:
    values = [float(entry[kind]) for kind in _RATE_FIELDS]
    if any(value < 0 for value in values):
        raise ValueError(f"a negative price in {entry!r}")
    return Rates(*values)
