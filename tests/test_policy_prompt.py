"""The rewrite prompt and completion parsing (pure, fast)."""

from __future__ import annotations

import pytest

from service.policy.prompt import (
    DEFAULT_PROMPT,
    GROUNDED_PROMPT,
    REPLACE_PROMPT,
    PromptConfig,
    parse_rewrite,
    prompt_by_version,
)

QUERY = "hdmi cable 2m"


def test_build_messages_puts_query_in_user_turn() -> None:
    messages = DEFAULT_PROMPT.build_messages("  wireless mouse ")
    assert [m["role"] for m in messages][0] == "system"
    assert messages[-1]["role"] == "user" and "wireless mouse" in messages[-1]["content"]
    assert messages[0]["content"] == DEFAULT_PROMPT.system_prompt


def test_sampling_params_follow_config() -> None:
    config = PromptConfig(version="t", max_tokens=12, stop=("\n",))
    params = config.sampling_params()
    assert params == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 12, "stop": ["\n"]}
    assert config.sampling_params(max_tokens=5)["max_tokens"] == 5


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("hdmi cable 2 meter high speed", "hdmi cable 2 meter high speed"),
        ("  hdmi cable 2m, high speed hdmi lead  ", "hdmi cable 2m, high speed hdmi lead"),
        ("<rewrite>hdmi 2.1 cable 2m</rewrite>", "hdmi 2.1 cable 2m"),
        ("Sure. <rewrite>hdmi 2.1 cable 2m</rewrite> hope it helps", "hdmi 2.1 cable 2m"),
        ("<rewrite>hdmi 2.1 cable, 2 m", "hdmi 2.1 cable, 2 m"),
        ("hdmi lead 2m</rewrite>", "hdmi lead 2m"),
        ('"hdmi cable 2 metre"', "hdmi cable 2 metre"),
        ("“hdmi cable 2 metre”", "hdmi cable 2 metre"),
        ("'hdmi cable 2 metre'.", "hdmi cable 2 metre"),
        ("Rewrite: hdmi cable 2 metre", "hdmi cable 2 metre"),
        ("Rewritten query: hdmi cable 2 metre", "hdmi cable 2 metre"),
        ("Expanded search query - hdmi cable 2 metre", "hdmi cable 2 metre"),
        ('Rewritten query: "hdmi cable 2 metre"', "hdmi cable 2 metre"),
        ("Rewritten query:\nhdmi cable 2 metre\nmore text", "hdmi cable 2 metre"),
        ("\n\n  hdmi cable 2 metre  \nsecond line", "hdmi cable 2 metre"),
        ("1. hdmi cable 2 metre", "hdmi cable 2 metre"),
        ("- hdmi cable 2 metre", "hdmi cable 2 metre"),
        ("hdmi cable 2 metre<|im_end|>", "hdmi cable 2 metre"),
        ("hdmi cable 2 metre.", "hdmi cable 2 metre"),
        ('Consider rephrasing it to: "hdmi cable 2 metre"', "hdmi cable 2 metre"),
        ("Gaming Laptop 16GB RAM", "Gaming Laptop 16GB RAM"),
        ("the best hdmi cable", "the best hdmi cable"),
        ("hdmi cable 2m", "hdmi cable 2m"),
        ("hi-fi speakers, stereo bookshelf speakers", "hi-fi speakers, stereo bookshelf speakers"),
        ("search-engine optimisation book", "search-engine optimisation book"),
        ("i7 laptop 16gb", "i7 laptop 16gb"),
    ],
)
def test_parse_accepts_usable_rewrites(completion: str, expected: str) -> None:
    text, ok = parse_rewrite(completion, QUERY)
    assert (text, ok) == (expected, True)
    assert text in completion  # the trainer maps the rewrite back onto completion tokens


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "   \n\t ",
        "...",
        "?!,;:",
        "<rewrite></rewrite>",
        "Rewritten query: ",
        "Rewrite:",
        '""',
        "tv tv tv tv tv tv tv tv",
        "hdmi cable hdmi cable hdmi cable hdmi cable",
        "Wi-Fi Mouse: Wireless Mouse: Wi-Fi Mouse: Wi-Fi Mouse: Wi-Fi Mouse: Wi-Fi Mouse:",
        "nvme SSD 1TB 100000000000000000000",
        "x" * 1000,
        "I'm ready to assist. What's your product?",
        "Sorry, I cannot help with that.",
        "Hi! What are you looking for today",
        "I need more details about the cable",
        "What kind of cable do you need?",
        "Keep every word of the query, add the product type, key attributes and common synonyms.",
    ],
)
def test_parse_falls_back_to_query_on_junk(completion: str) -> None:
    assert parse_rewrite(completion, QUERY) == (QUERY, False)


def test_parse_caps_length_at_a_word_boundary() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    text, ok = parse_rewrite(words, QUERY, max_chars=50)
    assert ok
    assert len(text) <= 50
    assert words.startswith(text)
    assert not text.endswith(" ")


def test_parse_drops_cut_off_item_when_truncated() -> None:
    completion = "hdmi cable, high speed hdmi lead, gold pla"
    assert parse_rewrite(completion, QUERY, truncated=True) == (
        "hdmi cable, high speed hdmi lead",
        True,
    )
    assert parse_rewrite(completion, QUERY)[0] == completion


def test_parse_handles_none_like_input() -> None:
    assert parse_rewrite(None, QUERY) == (QUERY, False)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Expand mode (the default): the policy adds terms, or says none are needed
# ---------------------------------------------------------------------------------------------


def test_default_prompt_keeps_the_shoppers_words() -> None:
    """Served search text: the query plus the policy's terms by default (the shopper's own
    words are never lost); replace mode searches with the answer alone; no answer: the query."""
    assert DEFAULT_PROMPT.search_text("usb hub", "powered 4 port") == "usb hub powered 4 port"
    assert REPLACE_PROMPT.search_text("usb hub", "powered usb hub") == "powered usb hub"
    for prompt in (DEFAULT_PROMPT, REPLACE_PROMPT):
        assert prompt.search_text("usb hub", None) == "usb hub"
        assert prompt.search_text("usb hub", "") == "usb hub"
    assert DEFAULT_PROMPT.version != REPLACE_PROMPT.version  # never mixed in logs or training


@pytest.mark.parametrize(
    ("completion", "answer", "searched"),
    [
        (
            "high speed, hdmi lead, 4k",
            "high speed, hdmi lead, 4k",
            f"{QUERY} high speed, hdmi lead, 4k",
        ),
        ("Extra terms: hdmi lead", "hdmi lead", f"{QUERY} hdmi lead"),
        ("NONE", "", QUERY),
        ("none.", "", QUERY),
        ("Extra terms: N/A", "", QUERY),
        ("", None, QUERY),
        ("I'm sorry, I can't help with that?", None, QUERY),
    ],
)
def test_expand_parse_and_search_text(completion: str, answer: str | None, searched: str) -> None:
    got = DEFAULT_PROMPT.parse(completion, QUERY)
    assert got == answer
    assert DEFAULT_PROMPT.search_text(QUERY, got) == searched
    if got:
        assert got in completion  # verbatim: the trainer maps it back onto tokens


def test_replace_mode_searches_the_answer_alone() -> None:
    got = REPLACE_PROMPT.parse("hdmi lead 2 metre", QUERY)
    assert REPLACE_PROMPT.search_text(QUERY, got) == "hdmi lead 2 metre"
    assert REPLACE_PROMPT.search_text(QUERY, None) == QUERY


@pytest.mark.parametrize(
    ("completion", "truncated", "answer"),
    [
        ("flash memory, sd card, flash memory, flash memory", False, "flash memory, sd card"),
        ("hdmi cable 2m, hdmi cable 2m, hdmi cable 2m", False, ""),  # only restates the query
        ("hdmi lead, 4k, high spe", True, "hdmi lead, 4k"),  # cut-off last item dropped
        ("a, b, c, d, e, f, g, h, i, j", False, "a, b, c, d, e, f, g, h"),  # max_items
        ("lead; cord; lead", False, "lead; cord"),
    ],
)
def test_expand_cuts_loops_and_restated_query(
    completion: str, truncated: bool, answer: str
) -> None:
    got = DEFAULT_PROMPT.parse(completion, QUERY, truncated=truncated)
    assert got == answer
    assert completion.startswith(got)


def test_default_prompt_shows_worked_examples() -> None:
    messages = DEFAULT_PROMPT.build_messages("mouse")
    roles = [m["role"] for m in messages]
    assert roles == ["system"] + ["user", "assistant"] * len(DEFAULT_PROMPT.examples) + ["user"]
    assert messages[-1]["content"].startswith("Query: mouse")


# -- grounded prompt ---------------------------------------------------------------------------

TITLES = ("Duracell Plus AA alkaline battery 4 pack", "Varta Longlife AA batteries")


def _grounded(titles: tuple[str, ...] = TITLES) -> PromptConfig:
    return GROUNDED_PROMPT.with_grounder(lambda query: titles)


def test_grounded_prompt_lists_the_titles_of_the_raw_query_and_examples() -> None:
    long = ("one two three four five six seven eight nine ten eleven twelve thirteen",)
    messages = _grounded(TITLES + long).build_messages("aa")
    last = messages[-1]["content"]
    assert last.startswith("Query: aa\nResults:\n- Duracell Plus AA alkaline battery 4 pack\n")
    assert "- one two three four five six seven eight nine ten eleven twelve\n" in last
    assert "thirteen" not in last  # titles are cut to context_words
    # every worked example carries its own titles, so the format is shown, not described
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert len(users) == len(GROUNDED_PROMPT.examples) + 1
    assert all("Results:\n- " in u for u in users)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("alkaline, battery", "alkaline, battery"),
        ("Alkaline batteries", "Alkaline batteries"),  # case-insensitive, words of the titles
        ("alkaline, lithium, battery", "alkaline"),  # cut before the first invented item
        ("lithium, alkaline", None),  # the first item is invented: unusable, raw query
        ("NONE", ""),  # abstention
        ("4 pack", "4 pack"),
    ],
)
def test_grounded_answers_keep_only_what_the_titles_say(
    completion: str, expected: str | None
) -> None:
    answer = _grounded().parse(completion, "aa")
    assert answer == expected
    if answer:
        assert answer in completion  # still a verbatim piece of the completion


def test_grounded_prompt_without_a_grounder_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="grounder"):
        GROUNDED_PROMPT.build_messages("aa")
    assert DEFAULT_PROMPT.context("aa") == ()  # a free prompt needs none


def test_prompt_versions_resolve_and_unknown_ones_are_refused() -> None:
    assert prompt_by_version("grounded-v1") is GROUNDED_PROMPT
    assert prompt_by_version(DEFAULT_PROMPT.version) is DEFAULT_PROMPT
    with pytest.raises(ValueError, match="expand-v2"):
        prompt_by_version("nope")
