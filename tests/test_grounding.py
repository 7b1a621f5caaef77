"""Grounded prompts on a real index: the titles shown are the raw query's top results, and the
deployment's prompt is resolved in one place (service/rewriting/grounding.py)."""

from __future__ import annotations

import pytest

from service.domain import PromptVersion
from service.policy.prompt import DEFAULT_PROMPT, GROUNDED_PROMPT
from service.retrieval.index import Retriever
from service.retrieval.open import open_retriever
from service.rewriting.grounding import TitleGrounder, serving_prompt
from service.settings import Settings
from tests.conftest import write_title_index

TITLES = {
    "a1": "Duracell Plus AA alkaline battery 4 pack",
    "a2": "Varta Longlife AA batteries",
    "c1": "Belkin HDMI cable 2 m",
    "c2": "Sony high speed HDMI cable",
    "m1": "Logitech wireless mouse",
}


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    root = write_title_index(tmp_path_factory.mktemp("titles"), TITLES)
    return open_retriever(Settings(), root=root)


def test_titles_are_the_raw_query_top_results_in_rank_order(retriever: Retriever) -> None:
    grounder = TitleGrounder(retriever, n=2)
    expected = [retriever.titles[r] for r in retriever.rank(["hdmi cable"], 2)[0].rows.tolist()]
    assert list(grounder("HDMI  cable")) == expected
    assert set(expected) == {TITLES["c1"], TITLES["c2"]}
    grounder.prefetch(["aa battery", "mouse"])  # one batch, then answered from the cache
    assert set(grounder("aa battery")) == {TITLES["a1"], TITLES["a2"]}


def test_a_grounder_without_an_index_says_so() -> None:
    with pytest.raises(RuntimeError, match="no index"):
        TitleGrounder(lambda: None)("tv")
    with pytest.raises(ValueError):
        TitleGrounder(lambda: None, n=0)


def test_the_deployment_prompt_is_resolved_from_settings(retriever: Retriever) -> None:
    assert serving_prompt(Settings(policy_prompt=PromptVersion.expand)) is DEFAULT_PROMPT
    prompt = serving_prompt(Settings(policy_prompt=PromptVersion.grounded), retriever)
    assert prompt.version == GROUNDED_PROMPT.version and prompt.grounded
    user = prompt.build_messages("aa battery")[-1]["content"]
    assert TITLES["a1"] in user and TITLES["m1"] not in user.split("Results:")[0]
    # an answer copied from those titles is kept; one the titles do not hold is not
    assert prompt.parse("alkaline", "aa battery") == "alkaline"
    assert prompt.parse("lithium", "aa battery") is None


def test_an_unknown_prompt_version_is_refused_by_settings() -> None:
    with pytest.raises(ValueError, match="grounded-v1"):
        Settings(policy_prompt="grounded-v9")
