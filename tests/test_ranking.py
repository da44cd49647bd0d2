"""The ranking rule of API.md with hand-computed scores: w(kind) * m * 0.5 ** (age / half-life)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoservice.customers import Interest
from geoservice.offers import Offer, OfferCatalog, rank, score

NOW = 1_795_430_400_000
HOUR = 3_600_000
DAY = 24 * HOUR
HALF_LIFE_S = 604_800  # 7 days


def view(product: str, age_ms: int, *categories: str) -> Interest:
    return Interest("view", product, categories, NOW - age_ms)


def click(product: str, age_ms: int) -> Interest:
    return Interest("newsletter_click", product, (), NOW - age_ms)


def offer(offer_id: str, products=(), categories=(), priority=0, fallback=False) -> Offer:
    return Offer(
        offer_id,
        title=offer_id,
        product_ids=tuple(products),
        categories=tuple(categories),
        priority=priority,
        fallback=fallback,
    )


def ids(offers: list[Offer]) -> list[str]:
    return [o.offer_id for o in offers]


def test_score_is_weight_times_match_times_decay():
    interests = [view("p1", 7 * DAY), click("p1", 0), Interest("cart", "p1", (), NOW - 14 * DAY)]
    # 1 * 0.5 + 2 * 1 + 3 * 0.25
    assert score(offer("a", ["p1"]), interests, NOW, HALF_LIFE_S) == pytest.approx(3.25)


def test_newsletter_click_beats_an_older_view():
    # The click is older (2 days) than the view (1 hour), but weighs twice:
    # click 2 * 0.5 ** (2/7) = 1.6405 against view 1 * 0.5 ** (1/168) = 0.9959.
    interests = [view("slicer", HOUR), click("knife", 2 * DAY)]
    ranked = rank(
        [offer("slicer-10", ["slicer"]), offer("knife-5", ["knife"])], interests, NOW, HALF_LIFE_S
    )
    assert ids(ranked) == ["knife-5", "slicer-10"]


def test_decay_flips_the_order():
    # Three half-lives later the click is worth 2 * 0.125 = 0.25 < a fresh view's 1.0.
    interests = [view("slicer", 0), click("knife", 21 * DAY)]
    ranked = rank(
        [offer("slicer-10", ["slicer"]), offer("knife-5", ["knife"])], interests, NOW, HALF_LIFE_S
    )
    assert ids(ranked) == ["slicer-10", "knife-5"]
    # Judged 20 days earlier, when the click was new and the view 5 days old, the click wins.
    earlier = NOW - 20 * DAY
    interests = [
        Interest("view", "slicer", (), earlier - 5 * DAY),
        Interest("newsletter_click", "knife", (), earlier),
    ]
    ranked = rank(
        [offer("slicer-10", ["slicer"]), offer("knife-5", ["knife"])],
        interests,
        earlier,
        HALF_LIFE_S,
    )
    assert ids(ranked) == ["knife-5", "slicer-10"]


def test_category_only_match_counts_half():
    interests = [view("p9", 0, "kitchen")]
    by_category = offer("cat", categories=["kitchen"])
    by_product = offer("prod", products=["p9"])
    assert score(by_category, interests, NOW, HALF_LIFE_S) == pytest.approx(0.5)
    assert ids(rank([by_category, by_product], interests, NOW, HALF_LIFE_S)) == ["prod", "cat"]


def test_product_match_is_not_counted_twice_with_its_category():
    interests = [view("p9", 0, "kitchen")]
    both = offer("both", products=["p9"], categories=["kitchen"])
    assert score(both, interests, NOW, HALF_LIFE_S) == pytest.approx(1.0)


def test_purchased_product_is_not_offered():
    interests = [
        click("slicer", HOUR),
        Interest("purchase", "slicer", (), NOW - DAY),
        view("knife", DAY),
    ]
    ranked = rank(
        [offer("slicer-10", ["slicer"]), offer("knife-5", ["knife"])], interests, NOW, HALF_LIFE_S
    )
    assert ids(ranked) == ["knife-5"]


def test_fallback_after_matches_and_only_fallback_without_match():
    interests = [view("knife", 0)]
    offers = [
        offer("welcome", fallback=True, priority=1),
        offer("coffee", ["beans"]),  # matches nothing, not a fallback: never
        offer("knife-5", ["knife"]),
        offer("generic", fallback=True, priority=5),
    ]
    assert ids(rank(offers, interests, NOW, HALF_LIFE_S)) == ["knife-5", "generic", "welcome"]
    assert ids(rank(offers, [], NOW, HALF_LIFE_S)) == ["generic", "welcome"]


def test_ties_by_priority_then_offer_id():
    interests = [view("p1", 0)]
    offers = [
        offer("b", ["p1"], priority=1),
        offer("a", ["p1"], priority=1),
        offer("c", ["p1"], priority=2),
    ]
    assert ids(rank(offers, interests, NOW, HALF_LIFE_S)) == ["c", "a", "b"]


ZONES = ("z1", "z2", "z3")
catalog_offers = st.builds(
    Offer,
    st.sampled_from(("o1", "o2", "o3", "o4")),
    title=st.just("t"),
    zone_ids=st.none() | st.lists(st.sampled_from(ZONES), max_size=3).map(tuple),
    trigger=st.sampled_from(("enter", "dwell", "exit")),
    starts_at_ms=st.none() | st.sampled_from((NOW - DAY, NOW + DAY)),
    ends_at_ms=st.none() | st.sampled_from((NOW, NOW + DAY)),
)
catalog_changes = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(("t1", "t2")), catalog_offers),
        st.tuples(st.just("remove"), st.sampled_from(("t1", "t2")), st.sampled_from(("o1", "o2"))),
        st.tuples(
            st.just("replace"),
            st.sampled_from(("t1", "t2")),
            st.lists(catalog_offers, max_size=4).map(lambda o: {x.offer_id: x for x in o}),
        ),
    ),
    max_size=12,
)


@given(catalog_changes)
def test_the_catalog_index_finds_what_a_scan_of_the_offers_finds(changes):
    """`candidates` reads an index by trigger and zone; after any sequence of puts, removals
    and reloads it gives exactly the offers a scan of every offer would."""
    catalog = OfferCatalog()
    offers: dict[str, dict[str, Offer]] = {}
    for action, tenant_id, value in changes:
        if action == "put":
            catalog.put(tenant_id, value)
            offers.setdefault(tenant_id, {})[value.offer_id] = value
        elif action == "remove":
            catalog.remove(tenant_id, value)
            offers.get(tenant_id, {}).pop(value, None)
        else:
            catalog.replace(tenant_id, value)
            offers[tenant_id] = dict(value)
    for tenant_id in ("t1", "t2", "t3"):
        for zone_id in ZONES:
            for trigger in ("enter", "dwell", "exit"):
                expected = {
                    o.offer_id
                    for o in offers.get(tenant_id, {}).values()
                    if o.applies_to(zone_id, trigger) and o.runs_at(NOW)
                }
                found = catalog.candidates(tenant_id, zone_id, trigger, NOW)
                assert sorted(o.offer_id for o in found) == sorted(expected)
    for tenant_id, expected_offers in offers.items():
        assert catalog.tenants.get(tenant_id, {}) == expected_offers
