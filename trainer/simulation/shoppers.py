"""Simulated shoppers: a position-based click model driven by hidden graded judgments.

`ospo simulate` (trainer/cli/simulate.py) runs sessions against a running API. Each session
draws a judged query, searches it over HTTP, and decides what the shopper examines, clicks,
adds to the cart and buys from the results *as shown*; the interactions go back to the API as
events. The API sees only that traffic: the judgments stay inside this process, which is what
lets an experiment measure how well the system recovers them from clicks
(trainer/online/propensity.py, trainer/online/interaction_labels.py). Written to be read top to
bottom; the click model is pure numpy on a seeded generator, the HTTP driver comes last.

Notation, for one session:

    q              a query drawn uniformly at random from the judged query set
    d_1 .. d_n     the results as the API shows them (n ≤ k)
    g(d)           the hidden gain of d for q, in [0, 1] (the label file's scale: Chorus
                   3→1, 2→0.5, 1→0.1, 0→0; ESCI E→1, S→0.1, C→0.01, I→0); unjudged: g0
    p(r)           examination probability of rank r:  (1/r)^eta  (default eta = 1), or an
                   explicit list p(1), p(2), ...
    E_r            examined ~ Bernoulli(p(r)), independently for each rank
    C_r            click     ~ Bernoulli(eps + (1 - eps) g(d_r))   if E_r
    A_r            add to cart ~ Bernoulli(cart · g(d_r))          if C_r
    B_r            purchase  ~ Bernoulli(buy · g(d_r))             if A_r

so that P(C_r) = p(r) · (eps + (1 - eps) g(d_r)): examination depends only on the rank and
attractiveness only on the document — the position-based model (PBM) that
trainer/online/propensity.py's estimator assumes, with p(r) the curve it should recover
(``examination_curve``, exported for the tests and the notes).

Documented decisions
--------------------
* PBM, not a cascade. Examination does not depend on what was clicked above. The estimator in
  trainer/online/propensity.py is exact under PBM; a cascade shopper would also make the relevance
  of the results above matter, which that estimator does not model.
* Explicit curves. With ``propensities`` given, ranks past the end of the list are never
  examined (p = 0): the list describes the whole visible page.
* Hidden relevance is the human grades completed by the assessed ones (service/grades.py), so
  a rewrite that surfaces a relevant product no human judged is clicked as a real shopper
  would click it; ``grades=human`` restores the human pool alone. What neither graded gets
  gain g0 (``unjudged_gain``, default 0): the completed pool covers every list the retrievers
  bring up, and most of what it misses is not relevant.
* Noise. eps (default 0.05) is the click probability of an examined irrelevant result: real
  shoppers misclick and explore, and without noise a zero-gain result could never be clicked,
  which would make a click a perfect relevance signal.
* Cart and purchase are driven by the gain again (not by the click alone), so a purchase is
  much stronger evidence of relevance than a click, as in real logs. Defaults cart = buy = 0.5:
  a perfect result is carted by half of those who click it and bought by half of those.
* Events. A purchase is posted with its click and its add-to-cart (a storefront sends each
  action as it happens). Event ids are ``sim:<search id>:<product>:<type>`` — deterministic,
  so a batch retried after a lost answer is deduplicated by the API. No impression events are
  sent: the search log already records what was shown (``searches.product_ids``).
* Queries are drawn uniformly (not by traffic): the judged set has no frequencies. The split
  (train|val|all) is trainer/training/data.py's, by hashed normalised query, so a scenario can shop
  on training queries and evaluate on validation ones.
* Random draws. Every session draws its query, then exactly 4 uniforms per shown result (in
  rank order), whatever happens: the same seed and the same served results give the same
  sessions, and one session's outcome never shifts the next one's random numbers.
* Pace. ``rate`` searches per second through the `limits` library (moving window of
  numerator/denominator of the rate as a fraction with denominator ≤ 60: 2.5/s is 5 per 2 s,
  so bursts are at most the numerator). Bounds: ``sessions`` and/or ``duration_s`` (checked
  before each session; the events of the sessions already run are always sent); neither = run
  until interrupted (Ctrl-C ends cleanly with the summary).
* Retries. 429 and 503 answers and transport errors are retried (tenacity) up to
  ``max_attempts`` times, waiting what Retry-After asks (capped) or else an exponential backoff.
  Other failures count as errors and the session moves on; a refused event batch counts all
  its events as errors.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

from service.domain import EventType, GradeSet
from trainer.training.data import Example, load_file_examples, split_examples

Split = Literal["all", "train", "val"]
RETRYABLE_STATUS = (429, 503)
# Draws per shown result (examine, click, cart, purchase): fixed, see "Random draws".
DRAWS_PER_RESULT = 4

# ---------------------------------------------------------------------------------------------
# 1. The click model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickModel:
    """The hidden shopper (module docstring: eta, p(r), eps, cart, buy, g0)."""

    eta: float = 1.0
    propensities: tuple[float, ...] | None = None
    epsilon: float = 0.05
    cart: float = 0.5
    purchase: float = 0.5
    unjudged_gain: float = 0.0

    def __post_init__(self) -> None:
        if not (self.eta >= 0 and math.isfinite(self.eta)):
            raise ValueError(f"eta must be a finite number ≥ 0, got {self.eta!r}")
        if self.propensities is not None:
            if not self.propensities:
                raise ValueError("propensities must list at least one rank")
            if any(not 0.0 <= p <= 1.0 for p in self.propensities):
                raise ValueError(f"propensities must be in [0, 1], got {self.propensities!r}")
        for name in ("epsilon", "cart", "purchase", "unjudged_gain"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def examination_curve(model: ClickModel, n: int) -> np.ndarray:
    """p(1..n): (1/r)^eta, or the explicit list (0 past its end). Shape (n,), float64."""
    if model.propensities is not None:
        p = np.zeros(n)
        given = np.asarray(model.propensities[:n], dtype=np.float64)
        p[: given.size] = given
        return p
    return (1.0 / np.arange(1, n + 1, dtype=np.float64)) ** model.eta


def click_probability(model: ClickModel, gains: np.ndarray) -> np.ndarray:
    """P(click | examined) = eps + (1 - eps) g, for gains clipped to [0, 1]."""
    g = np.clip(np.asarray(gains, dtype=np.float64), 0.0, 1.0)
    return model.epsilon + (1.0 - model.epsilon) * g


@dataclass(frozen=True)
class Interaction:
    """One action of a shopper on the result at 1-based ``position``."""

    position: int
    type: EventType


def simulate_interactions(
    rng: np.random.Generator, model: ClickModel, gains: Sequence[float]
) -> list[Interaction]:
    """What one shopper does with results whose hidden gains are ``gains`` (in shown order).

    Draws exactly DRAWS_PER_RESULT uniforms per result. Returns the actions in rank order,
    each rank's as click, add_to_cart, purchase (each implies the ones before it).
    """
    g = np.clip(np.asarray(gains, dtype=np.float64), 0.0, 1.0)
    n = g.size
    u = rng.random((n, DRAWS_PER_RESULT))
    examined = u[:, 0] < examination_curve(model, n)
    clicked = examined & (u[:, 1] < click_probability(model, g))
    carted = clicked & (u[:, 2] < model.cart * g)
    bought = carted & (u[:, 3] < model.purchase * g)
    out: list[Interaction] = []
    for r in range(n):
        for happened, etype in (
            (clicked[r], EventType.click),
            (carted[r], EventType.add_to_cart),
            (bought[r], EventType.purchase),
        ):
            if happened:
                out.append(Interaction(r + 1, etype))
    return out


def event_id(search_id: str, product_id: str, etype: str) -> str:
    """Deterministic id of one action (≤ 4 + 36 + 64 + 11 + 3 < 128 characters)."""
    return f"sim:{search_id}:{product_id}:{etype}"


# ---------------------------------------------------------------------------------------------
# 2. The query set
# ---------------------------------------------------------------------------------------------


def load_query_set(
    path: Path,
    fmt: str | None = None,
    split: Split = "all",
    val_fraction: float = 0.3,
    split_seed: int = 0,
    grades: GradeSet = GradeSet.completed,
) -> list[Example]:
    """Judged queries of a label file, restricted to one side of trainer/training/data.py's split
    (the defaults are the online update's: val_fraction 0.3 as OSPO_TRAIN_VAL_FRACTION, seed 0).
    The shoppers' hidden relevance is ``grades``: by default human grades completed by the
    assessed ones, so a result no human judged but an assessor did is clicked as it deserves.
    Raises FormatError for an unreadable file, ValueError for a bad split or an empty side."""
    if split not in ("all", "train", "val"):
        raise ValueError(f"split must be all, train or val, got {split!r}")
    examples = load_file_examples(path, fmt, grades)
    if split != "all":
        train, val = split_examples(examples, val_fraction, split_seed)
        examples = train if split == "train" else val
    if not examples:
        raise ValueError(f"{path}: no judged queries in split {split!r}")
    return examples


# ---------------------------------------------------------------------------------------------
# 3. Bookkeeping: the summary
# ---------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run did, as the simulator saw it (the API's side can be checked against it).

    ctr: share of successful searches with at least one click. clicks_by_position[r-1]: clicks
    at rank r. errors: failed searches plus events in refused or failed batches.
    """

    sessions: int = 0
    searches: int = 0
    search_errors: int = 0
    retries: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    clicked_searches: int = 0
    events_sent: int = 0
    events_stored: int = 0
    events_duplicate: int = 0
    event_errors: int = 0
    clicks_by_position: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_by: str = ""
    propensity_curve: list[float] = field(default_factory=list)
    click_model: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.search_errors + self.event_errors

    @property
    def ctr(self) -> float:
        return self.clicked_searches / self.searches if self.searches else 0.0

    @property
    def mean_click_position(self) -> float | None:
        if not self.clicks:
            return None
        return sum((r + 1) * c for r, c in enumerate(self.clicks_by_position)) / self.clicks

    def count(self, interactions: Sequence[Interaction]) -> None:
        clicks = [i.position for i in interactions if i.type == EventType.click]
        self.clicks += len(clicks)
        self.carts += sum(i.type == EventType.add_to_cart for i in interactions)
        self.purchases += sum(i.type == EventType.purchase for i in interactions)
        self.clicked_searches += bool(clicks)
        for r in clicks:
            if len(self.clicks_by_position) < r:
                self.clicks_by_position.extend([0] * (r - len(self.clicks_by_position)))
            self.clicks_by_position[r - 1] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "errors": self.errors,
            "ctr": self.ctr,
            "mean_click_position": self.mean_click_position,
        }


# ---------------------------------------------------------------------------------------------
# 4. HTTP: pacing, retries, the driver
# ---------------------------------------------------------------------------------------------


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class RetryWait:
    """tenacity wait: Retry-After when the last answer had one, else exponential backoff;
    never more than ``max_wait`` seconds."""

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self._backoff = wait_exponential(multiplier=0.25, max=max_wait)

    def __call__(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            asked = retry_after_seconds(outcome.result().headers.get("Retry-After"))
            if asked is not None:
                return min(asked, self.max_wait)
        return float(self._backoff(state))


class Pacer:
    """At most ``rate`` calls of ``wait`` return per second (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self.item = None
        if rate is not None:
            if not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"rate must be a positive number, got {rate!r}")
            frac = Fraction(rate).limit_denominator(60)
            if frac.numerator == 0:  # below 1/60 per second: one per ceil(1/rate) seconds
                frac = Fraction(1, math.ceil(1 / rate))
            self.item = RateLimitItemPerSecond(frac.numerator, frac.denominator)
            self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def wait(self, deadline: float | None = None) -> bool:
        """Block until a call is allowed; False if that would be after ``deadline``
        (time.monotonic())."""
        if self.item is None:
            return True
        while not self._limiter.hit(self.item, "search"):
            reset = self._limiter.get_window_stats(self.item, "search").reset_time
            pause = max(0.001, reset - time.time())
            if deadline is not None and time.monotonic() + pause > deadline:
                return False
            time.sleep(pause)
        return True


class Simulator:
    """Runs sessions against the API behind ``client`` (an httpx.Client with base_url set; a
    FastAPI TestClient works too)."""

    def __init__(
        self,
        client: httpx.Client,
        queries: Sequence[Example],
        model: ClickModel,
        *,
        k: int = 10,
        mode: str | None = None,
        rate: float | None = 5.0,
        seed: int = 0,
        batch_size: int = 100,
        flush_s: float = 2.0,
        max_attempts: int = 5,
        max_retry_wait_s: float = 30.0,
    ) -> None:
        if not queries:
            raise ValueError("no queries to simulate")
        if batch_size < 1 or batch_size > 1000:
            raise ValueError("batch_size must be in 1..1000 (the API's batch limit)")
        self.client, self.queries, self.model = client, list(queries), model
        self.k, self.mode, self.seed = k, mode, seed
        self.batch_size, self.flush_s = batch_size, flush_s
        self.pacer = Pacer(rate)
        self.rng = np.random.default_rng(seed)
        self.summary = Summary(
            propensity_curve=examination_curve(model, k).tolist(), click_model=asdict(model)
        )
        self._pending: list[dict[str, Any]] = []
        self._pending_since = 0.0
        self._retrying = Retrying(
            retry=retry_if_exception_type(httpx.TransportError)
            | retry_if_result(lambda r: r.status_code in RETRYABLE_STATUS),
            wait=RetryWait(max_retry_wait_s),
            stop=stop_after_attempt(max_attempts),
            before_sleep=self._count_retry,
            # Out of attempts: hand back the last answer (or raise the last transport error).
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
        )

    def _count_retry(self, state: RetryCallState) -> None:
        self.summary.retries += 1

    def _post(self, path: str, body: Any) -> httpx.Response | None:
        try:
            return self._retrying(self.client.post, path, json=body)
        except httpx.HTTPError:
            return None

    def _search(self, example: Example, session: int) -> dict[str, Any] | None:
        body: dict[str, Any] = {
            "query": example.query,
            "k": self.k,
            "user_id": f"sim-{self.seed}",
            "session_id": f"sim-{self.seed}-{session}",
        }
        if self.mode:
            body["mode"] = self.mode
        r = self._post("/v1/search", body)
        if r is None or r.status_code != 200:
            self.summary.search_errors += 1
            return None
        self.summary.searches += 1
        return r.json()

    def flush(self) -> None:
        """Send the buffered events in batches of at most ``batch_size``."""
        while self._pending:
            batch, self._pending = (
                self._pending[: self.batch_size],
                self._pending[self.batch_size :],
            )
            self.summary.events_sent += len(batch)
            r = self._post("/v1/events", batch)
            if r is None or r.status_code != 200:
                self.summary.event_errors += len(batch)
                continue
            answer = r.json()
            self.summary.events_stored += int(answer["stored"])
            self.summary.events_duplicate += int(answer["duplicates"])

    def session(self, i: int) -> None:
        """One shopper: draw a query, search, interact, buffer the events."""
        example = self.queries[int(self.rng.integers(len(self.queries)))]
        answer = self._search(example, i)
        self.summary.sessions += 1
        if answer is None:
            return
        shown = [r["product_id"] for r in answer["results"]]
        gains = [example.targets.get(pid, self.model.unjudged_gain) for pid in shown]
        actions = simulate_interactions(self.rng, self.model, gains)
        self.summary.count(actions)
        if actions and not self._pending:
            self._pending_since = time.monotonic()
        for a in actions:
            pid = shown[a.position - 1]
            self._pending.append(
                {
                    "event_id": event_id(answer["search_id"], pid, a.type),
                    "search_id": answer["search_id"],
                    "product_id": pid,
                    "type": str(a.type),
                }
            )
        due = time.monotonic() - self._pending_since >= self.flush_s
        if len(self._pending) >= self.batch_size or (self._pending and due):
            self.flush()

    def run(
        self,
        sessions: int | None = None,
        duration_s: float | None = None,
        on_session: Callable[[Summary], None] | None = None,
    ) -> Summary:
        """Sessions until ``sessions`` ran or ``duration_s`` passed (or Ctrl-C); then the
        buffered events are sent and the summary returned."""
        start = time.monotonic()
        deadline = start + duration_s if duration_s is not None else None
        i = 0
        try:
            while True:
                if sessions is not None and i >= sessions:
                    self.summary.stopped_by = "sessions"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    self.summary.stopped_by = "duration"
                    break
                if not self.pacer.wait(deadline):
                    self.summary.stopped_by = "duration"
                    break
                self.session(i)
                i += 1
                if on_session is not None:
                    on_session(self.summary)
        except KeyboardInterrupt:
            self.summary.stopped_by = "interrupted"
        self.flush()
        self.summary.wall_s = time.monotonic() - start
        return self.summary
