"""The composition DSL: what a pipeline compiles to, and the mistakes it refuses with a clear
ValueError when the pipeline is declared (not later, in a worker)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.dsl import Pipeline, fan_out, stage
from pipelines.examples import chain, composed, ensemble
from workers.batching import batch


@batch(max_batch_size=4)
async def a(items: list[Any]) -> list[Any]:
    return items


def b(items: list[Any]) -> list[Any]:
    return items


def c(items: list[Any]) -> list[Any]:
    return items


def d(items: list[Any]) -> list[Any]:
    return items


# -- what the examples compile to ------------------------------------------------------------


def test_a_chain_compiles_to_stages_that_each_feed_the_next() -> None:
    stages = chain.compile().stages
    assert list(stages) == ["chain.preprocess", "chain.model", "chain.postprocess"]
    assert stages["chain.preprocess"].next == ("chain.model",)
    assert stages["chain.model"].next == ("chain.postprocess",)
    assert stages["chain.postprocess"].next == ()


def test_a_router_hands_nothing_on_by_itself() -> None:
    stages = composed.compile().stages
    one, two = stages["composed.model_one"], stages["composed.model_two"]
    assert one.routes == ("composed.model_two",)
    assert one.next == (), "a routing stage's plain outputs are results"
    assert two.next == ()
    assert two.routes == ()


def test_a_leading_fan_out_gets_a_split_stage_and_its_branches_a_join() -> None:
    topology = ensemble.compile()
    stages = topology.stages
    assert list(stages) == [
        "ensemble.split",
        "ensemble.model_a",
        "ensemble.model_b",
        "ensemble.average",
    ]
    assert stages["ensemble.split"].next == ("ensemble.model_a", "ensemble.model_b")
    for branch in ("ensemble.model_a", "ensemble.model_b"):
        assert stages[branch].join == "ensemble.average"
        assert stages[branch].fan_in == 2
        assert stages[branch].next == ()
    assert stages["ensemble.average"].next == ()
    assert topology.spec.entry.name == "ensemble.split"


def test_a_fan_out_inside_a_pipeline_needs_no_split() -> None:
    stages = Pipeline("p", a, fan_out(b, c, d), stage(a, name="j")).compile().stages
    assert list(stages) == ["p.a", "p.b", "p.c", "p.d", "p.j"]
    assert stages["p.a"].next == ("p.b", "p.c", "p.d")
    assert {stages[s].fan_in for s in ("p.b", "p.c", "p.d")} == {3}


# -- mistakes refused at declaration ---------------------------------------------------------


def test_a_route_to_an_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match=r"stage a routes to unknown stage 'nowhere'"):
        Pipeline("p", stage(a, routes=["nowhere"]), b)


def test_a_route_may_not_name_a_stage_of_another_pipeline() -> None:
    with pytest.raises(ValueError, match=r"routes to unknown stage 'q\.b'"):
        Pipeline("p", stage(a, routes=["q.b"]), b)


def test_a_route_into_a_fan_out_branch_is_refused() -> None:
    """An item routed to one branch would leave its join waiting for the other branch forever:
    the job would stay running with no entry left anywhere (lost)."""
    with pytest.raises(ValueError, match=r"route"):
        Pipeline("p", stage(a, routes=["b"]), fan_out(b, c), d)


def test_a_fan_out_must_be_followed_by_its_join() -> None:
    with pytest.raises(ValueError, match=r"a fan_out must be followed by its join stage"):
        Pipeline("p", a, fan_out(b, c))
    with pytest.raises(ValueError, match=r"a fan_out must be followed by its join stage"):
        Pipeline("p", fan_out(b, c))
    with pytest.raises(ValueError, match=r"a fan_out must be followed by its join stage"):
        Pipeline("p", a, fan_out(b, c), fan_out(d, stage(a, name="e")), stage(a, name="j"))


def test_a_fan_out_needs_two_branches() -> None:
    with pytest.raises(ValueError, match=r"fan_out needs at least two branches"):
        fan_out(a)


def test_fan_out_branches_cannot_route() -> None:
    with pytest.raises(ValueError, match=r"fan-out branches cannot route"):
        Pipeline("p", fan_out(stage(b, routes=["d"]), c), d)


def test_duplicate_stage_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"stage names must be unique, got \['a', 'b', 'a'\]"):
        Pipeline("p", a, b, a)
    with pytest.raises(ValueError, match=r"stage names must be unique"):
        Pipeline("p", a, fan_out(b, c), stage(d, name="b"))
    with pytest.raises(ValueError, match=r"stage names must be unique"):
        Pipeline("p", a, stage(b, name="a"))


def test_a_stage_named_split_clashes_with_the_inserted_one() -> None:
    with pytest.raises(ValueError, match=r"stage names must be unique, got \['split',"):
        Pipeline("p", fan_out(b, c), stage(d, name="split"))


def test_bad_pipeline_and_stage_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"must not contain '\.'"):
        Pipeline("p.q", a)
    with pytest.raises(ValueError, match=r"bad name"):
        Pipeline("p q", a)
    with pytest.raises(ValueError, match=r"bad name"):
        stage(a, name="no spaces")
    with pytest.raises(ValueError, match=r"needs at least one stage"):
        Pipeline("p")
