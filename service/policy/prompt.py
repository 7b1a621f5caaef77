"""The rewrite prompt and the parser that turns a completion back into a search query.

Two rewrite modes (``RewriteMode``):
* ``expand`` (default) — the policy proposes terms to *add* to the shopper's query, or says
  that none are needed ("NONE"); search runs on ``query + " " + additions``. The shopper's own
  words are always searched, so the policy can only add (query2doc / query expansion by
  prompting / BEQUE's "increment" rewrites all keep the original query).
* ``replace`` — the policy's line replaces the query (the paper's setting).

A *grounded* prompt (``GROUNDED_PROMPT``) also shows the policy the titles of the raw query's
top results (its ``ground`` function: service/rewriting/grounding.py) and asks for additions
copied from them: the parser keeps the list only up to the first item whose words are not in
those titles. A 135M model invents unrelated terms ("aa" → "avalon, halibut"); choosing among
the catalogue's own words asks far less of it (bench/grounding.py measures both).

The prompt is versioned: every logged rewrite records `PromptConfig.version`, so training never
mixes rollouts from different prompts, and changing the wording means bumping the version.
The model is tiny (135M), so the prompt asks for one plain line and the parser does the rest:
it strips tags, labels and quotes, and falls back to the raw query when the completion is
unusable (empty, chatty, looping), so a bad generation never makes search worse than no rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from service.domain import PromptVersion

REWRITE_OPEN = "<rewrite>"
REWRITE_CLOSE = "</rewrite>"


class RewriteMode(StrEnum):
    expand = "expand"
    replace = "replace"


# An explicit "nothing to add" answer in expand mode: search with the raw query.
_NOTHING = re.compile(r"^\W*(?:none|nothing|n/?a|no (?:extra |additional )?terms?)\W*$", re.I)


# query -> titles of the raw query's top results (what a grounded prompt shows)
Grounder = Callable[[str], Sequence[str]]


@dataclass(frozen=True)
class PromptConfig:
    """One version of the rewrite prompt plus the generation parameters used to serve it."""

    version: str = PromptVersion.expand
    mode: RewriteMode = RewriteMode.expand
    system_prompt: str = (
        "You help an online shop's search engine. Given a shopper's search query, write a few "
        "extra search terms that help find the right products: the product category, "
        "synonyms and key attributes. Do not repeat the query. Reply with the extra terms "
        "only, comma-separated, on one line, or NONE if the query needs nothing more."
    )
    user_template: str = "Query: {query}\nExtra terms:"
    # Worked examples shown as earlier chat turns: a 135M model copies the format far more
    # reliably from examples than from instructions. Generic queries, not from any eval set.
    examples: tuple[tuple[str, str], ...] = (
        ("running shoes", "trainers, sneakers, jogging, sport footwear"),
        ("hdmi cable 2m", "high speed hdmi lead, 2 metre, 4k"),
        ("coffee maker", "coffee machine, espresso, filter coffee, kitchen appliance"),
    )
    max_items: int = 8  # expand mode: additions kept at most (a loop is cut earlier)
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 32  # served, sampled in training, greedy in eval/gate: one length
    stop: tuple[str, ...] = field(default=("\n", REWRITE_CLOSE))
    # Grounded prompts: the user turn lists `{context}`, the raw query's top result titles
    # (`ground`), each cut to `context_words` words; `example_contexts` go with `examples`.
    grounded: bool = False
    context_words: int = 12
    example_contexts: tuple[tuple[str, ...], ...] = ()
    ground: Grounder | None = field(default=None, compare=False, repr=False)

    def with_grounder(self, ground: Grounder | None) -> PromptConfig:
        """This prompt with the function that finds a query's titles (grounded prompts)."""
        return replace(self, ground=ground)

    def context(self, query: str) -> tuple[str, ...]:
        """The titles a grounded prompt shows for `query` (cut to `context_words`); ()."""
        if not self.grounded:
            return ()
        if self.ground is None:
            raise RuntimeError(
                f"prompt {self.version} is grounded: attach a grounder with with_grounder()"
            )
        return tuple(" ".join(t.split()[: self.context_words]) for t in self.ground(query))

    def _user(self, query: str, context: Sequence[str]) -> str:
        listed = "\n".join(f"- {t}" for t in context) or "- (no results)"
        return self.user_template.format(query=query.strip(), context=listed)

    def build_messages(self, query: str) -> list[dict[str, str]]:
        """Chat messages for `query`; the model's chat template turns them into the prompt."""
        messages = [{"role": "system", "content": self.system_prompt}]
        contexts = self.example_contexts or ((),) * len(self.examples)
        for (example_query, answer), context in zip(self.examples, contexts, strict=True):
            messages += [
                {"role": "user", "content": self._user(example_query, context)},
                {"role": "assistant", "content": answer},
            ]
        messages.append({"role": "user", "content": self._user(query, self.context(query))})
        return messages

    def sampling_params(self, max_tokens: int | None = None) -> dict[str, Any]:
        """OpenAI-style sampling fields for serving (greedy by default)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": max_tokens if max_tokens is not None else self.max_tokens,
            "stop": list(self.stop),
        }

    def parse(
        self, completion: str, query: str, *, truncated: bool = False, max_chars: int = 256
    ) -> str | None:
        """The policy's answer: the additions (expand) or the new query (replace), a verbatim
        substring of ``completion``; "" when it says nothing is needed (expand); None when the
        completion is unusable. Either of the last two means: search with the raw query."""
        if self.mode == RewriteMode.expand:
            answer = parse_additions(
                completion, query, max_chars, truncated=truncated, max_items=self.max_items
            )
            if answer and self.grounded:
                return grounded_prefix(answer, self.context(query))
            return answer
        answer, ok = parse_rewrite(completion, query, max_chars, truncated=truncated)
        return answer if ok else None

    def search_text(self, query: str, answer: str | None) -> str:
        """What retrieval searches with, given the parsed answer (see ``parse``)."""
        if not answer:
            return query
        if self.mode == RewriteMode.expand:
            return f"{query} {answer}"
        return answer


DEFAULT_PROMPT = PromptConfig()
REPLACE_PROMPT = PromptConfig(
    version=PromptVersion.replace,
    mode=RewriteMode.replace,
    system_prompt=(
        "You rewrite online shop search queries. Expand the shopper's query into a better "
        "product search query: keep every word of the query, add the product type, key "
        "attributes and common synonyms. Reply with the rewritten query only, on one line."
    ),
    user_template="Query: {query}\nRewritten query:",
    examples=(),
)
GROUNDED_PROMPT = PromptConfig(
    version=PromptVersion.grounded,
    system_prompt=(
        "You help an online shop's search engine. You see a shopper's search query and the "
        "titles of the first products it finds. If words from those titles name what the "
        "shopper wants more precisely (the product type or a key attribute), reply with "
        "them, copied exactly, comma-separated, on one line. If the results already fit the "
        "query, reply NONE."
    ),
    user_template="Query: {query}\nResults:\n{context}\nExtra terms:",
    # Generic queries and titles written for the prompt, not from any evaluation set.
    examples=(
        ("laptop bag", "notebook case"),
        ("hdmi cable 2m", "NONE"),
        ("wireless earbuds", "headset, bluetooth"),
    ),
    example_contexts=(
        (
            "Targus Classic notebook case 39.6 cm (15.6in) briefcase black",
            "Samsonite backpack for 15.6 inch notebook",
            "HP Essential top load notebook case",
        ),
        (
            "Belkin HDMI cable 2 m HDMI Type A (Standard) black",
            "Sony high speed HDMI cable 2 m",
            "Nedis high speed HDMI cable with Ethernet 2 m",
        ),
        (
            "Samsung Galaxy Buds headset in-ear Bluetooth black",
            "JBL Tune true wireless headphones",
            "Sony WF-1000XM3 headset Bluetooth",
        ),
    ),
    max_items=3,
    grounded=True,
)
PROMPTS = {p.mode: p for p in (DEFAULT_PROMPT, REPLACE_PROMPT)}
PROMPT_VERSIONS = {p.version: p for p in (DEFAULT_PROMPT, REPLACE_PROMPT, GROUNDED_PROMPT)}


def prompt_by_version(version: str) -> PromptConfig:
    """The prompt of `version` (a grounded one still needs ``with_grounder``)."""
    try:
        return PROMPT_VERSIONS[version]
    except KeyError:
        raise ValueError(
            f"unknown prompt version {version!r}; choose one of {', '.join(PROMPT_VERSIONS)}"
        ) from None


def grounded_prefix(additions: str, context: Sequence[str]) -> str | None:
    """The leading items of `additions` whose every word appears in `context` (the titles);
    None when the first item is not grounded (unusable: search runs on the raw query)."""
    vocabulary = {w for title in context for w in _WORD.findall(title.lower())}
    end = 0
    for item in _ITEM_SPLIT.split(additions):
        words = _WORD.findall(item.lower())
        if not words or any(w not in vocabulary for w in words):
            break
        end = additions.find(item, end) + len(item)
    return additions[:end].rstrip(" \t.;,:") or None


_OPEN_TAG = re.compile(r"<\s*rewrite\s*>", re.IGNORECASE)
_CLOSE_TAG = re.compile(r"<\s*/\s*rewrite\s*>", re.IGNORECASE)
_OTHER_TAG = re.compile(r"<\s*/?\s*[a-z_|][^<>]{0,40}>", re.IGNORECASE)
_LABEL = re.compile(
    r"^(?:(?:here\s+is\s+|here's\s+)?(?:the\s+|a\s+|an\s+|my\s+)?"
    r"(?:(?:expanded|rewritten|improved|better|new|product|search|extra|additional)\s+)*"
    r"(?:query|rewrite|search|answer|output|result|terms?|keywords?)|rewrite|assistant)"
    r"\s*(?:\([^)]*\))?(?:\s*:+|\s+[-–=]+)\s*",
    re.IGNORECASE,
)
_LIST_MARKER = re.compile(r"^(?:[-*•]|\d{1,2}[.)])\s+")
_QUOTED_AFTER_COLON = re.compile(r":\s*([\"“«])(?P<inner>[^\"”»]+)[\"”»]\s*[.!]?\s*$")
_QUOTES = "\"'`“”‘’«»"
_WORD = re.compile(r"\w+", re.UNICODE)
_CHATTER = re.compile(
    r"^(?:i\s|i'm\b|i’m\b|i'd\b|sure\b|certainly\b|of course\b|sorry\b|as an ai\b|"
    r"to (?:create|make|improve)\b|the best (?:way|place)\b|you\s|please\s|hello\b|hi[,!.])"
    r"|\b(?:i'm|i’m|i am|i'd|i will|i can|you're|you’re)\b|\?\s*$",
    re.IGNORECASE,
)
_LOOP = re.compile(r"(.{3,}?)\1{2,}", re.DOTALL)
_CHAR_RUN = re.compile(r"(.)\1{7,}")
_PROMPT_ECHO = (
    "you rewrite online shop",
    "rewritten query only",
    "keep every word of the query",
    "you help an online shop",
    "extra terms only",
)


def parse_rewrite(
    completion: str, query: str, max_chars: int = 256, *, truncated: bool = False
) -> tuple[str, bool]:
    """Extract the rewritten query from `completion`.

    Returns `(rewrite, True)` when a usable rewrite was found, else `(query, False)`: callers
    always get something searchable, and the flag tells them (and the logs) it was a fallback.
    A usable rewrite is always a verbatim substring of `completion`, so the trainer can map it
    back onto the completion's tokens by character offsets. `truncated` (the generation hit
    `max_tokens`) drops a trailing, probably cut-off, comma-separated item.
    """
    text = _tagged_region(completion or "")
    line = _strip_wrapping(_first_content_line(text))
    if truncated and "," in line:
        head = line[: line.rfind(",")].rstrip()
        if _WORD.search(head):
            line = head
    line = line.rstrip(" \t.;,:")
    if len(line) > max_chars:
        line = _cap(line, max_chars)
    if not _usable(line):
        return query, False
    return line, True


_ITEM_SPLIT = re.compile(r"\s*[,;]\s*")


def parse_additions(
    completion: str,
    query: str,
    max_chars: int = 256,
    *,
    truncated: bool = False,
    max_items: int = 8,
) -> str | None:
    """Expand mode: the added terms, "" for an explicit "nothing to add", None if unusable.

    The answer line is cleaned like a rewrite (tags, labels, quotes), then read as a comma-
    separated list: leading items that restate the query are skipped, and the list is cut
    before the first item that repeats the query or an earlier one (small models often start
    a good list and then loop: "flash memory, flash memory, ..."). What is kept is one
    contiguous piece of the line, so it stays a verbatim substring of `completion`.
    """
    line = _strip_wrapping(_first_content_line(_tagged_region(completion or "")))
    if _NOTHING.match(line):
        return ""
    restating = " ".join(_WORD.findall(query.lower()))
    seen = {restating}
    begin, end, kept, restated = 0, 0, 0, False
    items = list(_ITEM_SPLIT.finditer(line))
    starts = [0] + [m.end() for m in items]
    stops = [m.start() for m in items] + [len(line)]
    for start, stop in zip(starts, stops, strict=True):
        words = " ".join(_WORD.findall(line[start:stop].lower()))
        if kept == 0 and words == restating:  # leading restatements of the query: skip
            begin, restated = stop, True
            continue
        if not words or words in seen or kept == max_items:
            break
        if truncated and stop == len(line):
            break  # the last item was cut off by the token limit
        seen.add(words)
        end, kept = stop, kept + 1
    line = _ITEM_SPLIT.sub("", line[begin:end], count=1) if begin else line[:end]
    line = line.rstrip(" \t.;,:")
    if len(line) > max_chars:
        line = _cap(line, max_chars)
    if not kept:
        return "" if restated else None  # restating the query adds nothing, like "NONE"
    return line if _usable(line) else None


def _tagged_region(text: str) -> str:
    """The text inside `<rewrite>...</rewrite>` when tagged, cut before any other markup."""
    opened = _OPEN_TAG.search(text)
    if opened:
        text = text[opened.end() :]
    closed = _CLOSE_TAG.search(text)
    if closed:
        text = text[: closed.start()]
    other = _OTHER_TAG.search(text)
    if other:
        text = text[: other.start()]
    return text


def _first_content_line(text: str) -> str:
    for raw in text.splitlines():
        line = raw.strip()
        # A line holding only a label ("Rewritten query:") means the answer is on the next one.
        if line and _LABEL.sub("", line, count=1).strip(" \t:" + _QUOTES):
            return line
    return ""


def _strip_wrapping(line: str) -> str:
    """Remove leading labels, list markers and surrounding quotes, until nothing changes."""
    previous = None
    while previous != line and line:
        previous = line
        line = _LABEL.sub("", line, count=1)
        line = _LIST_MARKER.sub("", line).strip().rstrip(" \t.;,:")
        quoted = _QUOTED_AFTER_COLON.search(line)
        if quoted:
            line = quoted.group("inner").strip()
        if len(line) >= 2 and line[0] in _QUOTES and line[-1] in _QUOTES:
            line = line[1:-1].strip()
        elif line and line[0] in _QUOTES and line.count(line[0]) == 1:
            line = line[1:].strip()
        elif line and line[-1] in _QUOTES and line.count(line[-1]) == 1:
            line = line[:-1].strip()
    return line


def _cap(line: str, max_chars: int) -> str:
    """Cut an overlong rewrite at the last separator; one unbroken blob is not a rewrite."""
    cut = max(line.rfind(",", 0, max_chars + 1), line.rfind(" ", 0, max_chars + 1))
    if cut < max_chars // 2:
        return ""
    return line[:cut].rstrip(" \t.;,:")


def _usable(line: str) -> bool:
    """Reject empty, punctuation-only, chatty, prompt-echoing and degenerate rewrites."""
    words = [w.lower() for w in _WORD.findall(line)]
    if not words:
        return False
    if _CHATTER.search(line):
        return False
    lowered = line.lower()
    if any(echo in lowered for echo in _PROMPT_ECHO):
        return False
    # Degenerate loops: "tv tv tv tv tv tv", "a b, a b, a b", "100000000000".
    if len(words) >= 6 and len(set(words)) / len(words) < 0.4:
        return False
    return not (_LOOP.search(line) or _CHAR_RUN.search(line))
