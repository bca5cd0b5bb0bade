"""build_context: several stores, one budget, most relevant first, omissions named."""

from __future__ import annotations

import pytest

from rxagent.exceptions import ConfigurationError
from rxagent.state import StateStore
from rxagent.tools.prompt_context import CHARS_PER_TOKEN, build_context


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def stores() -> tuple[Clock, StateStore, StateStore]:
    clock = Clock()
    prices = StateStore("prices", clock=clock)
    alerts = StateStore("alerts", clock=clock)
    prices.set("AAPL", {"px": 190.5})  # t=1000
    clock.t = 1001
    alerts.set("AAPL", "above 190")
    clock.t = 1002
    prices.set("MSFT", {"px": 410.0})
    clock.t = 1003
    alerts.set("MSFT", "below 420")
    clock.t = 1010
    return clock, prices, alerts


def test_without_a_budget_everything_is_shown_newest_first() -> None:
    _, prices, alerts = stores()
    assert build_context([prices, alerts]) == "\n".join(
        [
            "state 'alerts' v2, 2 keys, updated 7.0s ago:",
            'MSFT: "below 420" (7.0s ago)',
            'AAPL: "above 190" (9.0s ago)',
            "state 'prices' v2, 2 keys, updated 8.0s ago:",
            'MSFT: {"px":410.0} (8.0s ago)',
            'AAPL: {"px":190.5} (10.0s ago)',
        ]
    )


def test_each_store_renders_as_its_own_context_does() -> None:
    _, prices, _ = stores()
    assert build_context([prices]) == prices.context(10_000)


def test_the_budget_keeps_the_most_recent_entries_across_stores_and_names_the_rest() -> None:
    _, prices, alerts = stores()
    # ranked newest first: alerts MSFT, prices MSFT, alerts AAPL, prices AAPL
    text = build_context([prices, alerts], max_chars=205)
    assert len(text) <= 205
    assert text.splitlines() == [
        "state 'alerts' v2, 2 keys, updated 7.0s ago:",
        'MSFT: "below 420" (7.0s ago)',
        'AAPL: "above 190" (9.0s ago)',
        "state 'prices' v2, 2 keys, updated 8.0s ago:",
        'MSFT: {"px":410.0} (8.0s ago)',
        "... 1 more key omitted",
    ]
    tight = build_context([prices, alerts], max_chars=180)
    assert tight.splitlines() == [
        "state 'alerts' v2, 2 keys, updated 7.0s ago:",
        'MSFT: "below 420" (7.0s ago)',
        "... 1 more key omitted",
        "state 'prices' v2, 2 keys, updated 8.0s ago:",
        "... 2 more keys omitted",
    ]
    # room for the headers only: every store says what it left out, in the order given
    assert build_context([prices, alerts], max_chars=140).splitlines() == [
        "state 'prices' v2, 2 keys, updated 8.0s ago:",
        "... 2 more keys omitted",
        "state 'alerts' v2, 2 keys, updated 7.0s ago:",
        "... 2 more keys omitted",
    ]


def test_max_tokens_is_four_characters_a_token_and_the_smaller_budget_wins() -> None:
    _, prices, alerts = stores()
    assert CHARS_PER_TOKEN == 4
    assert build_context([prices, alerts], max_tokens=35) == build_context(
        [prices, alerts], max_chars=140
    )
    assert build_context([prices, alerts], max_tokens=1000, max_chars=140) == build_context(
        [prices, alerts], max_chars=140
    )


def test_a_relevance_function_ranks_entries() -> None:
    _, prices, alerts = stores()

    def alerts_first(store: str, entry: object) -> float:
        return 1.0 if store == "alerts" else 0.0

    text = build_context([prices, alerts], max_chars=180, relevance=alerts_first)
    assert text.splitlines() == [
        "state 'alerts' v2, 2 keys, updated 7.0s ago:",
        'MSFT: "below 420" (7.0s ago)',
        'AAPL: "above 190" (9.0s ago)',
        "state 'prices' v2, 2 keys, updated 8.0s ago:",
        "... 2 more keys omitted",
    ]


def test_a_tiny_budget_cuts_the_headers_and_empty_stores_show_their_header() -> None:
    _, prices, _ = stores()
    empty = StateStore("empty")
    assert build_context([prices, empty], max_chars=20) == "state 'prices' v2, …"
    assert build_context([empty]) == "state 'empty' v0, 0 keys:"
    assert build_context([prices], max_chars=0) == ""


def test_bad_arguments_are_refused() -> None:
    _, prices, _alerts = stores()
    with pytest.raises(ConfigurationError, match="max_chars"):
        build_context([prices], max_chars=-1)
    with pytest.raises(ConfigurationError, match="two stores of one name"):
        build_context([prices, prices])
    with pytest.raises(ConfigurationError, match="several stores"):
        build_context(prices)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="relevance"):
        build_context([prices], relevance="oldest")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="StateStores"):
        build_context(["prices"])  # type: ignore[list-item]
