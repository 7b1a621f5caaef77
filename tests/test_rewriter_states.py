"""The active policy states search honours (raw query, base model, adapter) and the miss path:
a miss never waits with the default budget, is generated once in the background and stored."""

from __future__ import annotations

import asyncio

from service.adapters.swap import ActiveAdapterWatcher
from service.policy.prompt import DEFAULT_PROMPT
from service.policy.protocol import RewriteResult
from service.rewriting.rewriter import PolicyRewriter
from service.rewriting.store import RewriteStore


class RecordingPolicy:
    """A policy that answers one fixed addition after `delay_s` and records every call."""

    def __init__(self, delay_s: float = 0.0, ok: bool = True) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.delay_s = delay_s
        self.ok = ok

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        self.calls.append((query, adapter))
        await asyncio.sleep(self.delay_s)
        return RewriteResult(
            text=f"{query} usb hub" if self.ok else query,
            raw_completion="usb hub" if self.ok else "???",
            adapter=adapter,
            prompt_version=DEFAULT_PROMPT.version,
            latency_ms=1.0,
            ok=self.ok,
            answer="usb hub" if self.ok else None,
        )


def _rewriter(
    policy: RecordingPolicy,
    serve_base: bool,
    adapter: str | None,
    budget_ms: float = 1000,
    max_pending: int = 64,
    db_url: str | None = None,
) -> PolicyRewriter:
    watcher = ActiveAdapterWatcher(policy, "sqlite://")  # type: ignore[arg-type]
    watcher.current = adapter
    return PolicyRewriter(
        policy,  # type: ignore[arg-type]
        RewriteStore(16, database_url=db_url),
        watcher,
        DEFAULT_PROMPT,
        budget_ms=budget_ms,
        serve_base=serve_base,
        max_pending=max_pending,
    )


def test_no_adapter_serves_the_raw_query_without_calling_the_policy() -> None:
    policy = RecordingPolicy()
    rw = asyncio.run(_rewriter(policy, False, None).rewrite("Docking Station", "docking station"))
    assert rw.text == "Docking Station" and rw.source == "none" and rw.answer is None
    assert policy.calls == []


def test_base_policy_serves_when_asked() -> None:
    policy = RecordingPolicy()
    rewriter = _rewriter(policy, True, None)
    first = asyncio.run(rewriter.rewrite("Docking Station", "docking station"))
    assert first.source == "policy" and first.text == "Docking Station usb hub"
    assert policy.calls == [("Docking Station", None)]


def test_adapter_answer_is_stored_as_additions_and_composed_per_request() -> None:
    policy = RecordingPolicy()
    rewriter = _rewriter(policy, False, "a1")

    async def two() -> tuple:
        first = await rewriter.rewrite("Docking Station", "docking station")
        again = await rewriter.rewrite("docking  station", "docking station")
        return first, again

    first, again = asyncio.run(two())
    assert first.source == "policy" and first.adapter == "a1"
    # the store keeps the additions; each shopper's own spelling is searched
    assert again.source == "cache" and again.text == "docking  station usb hub"
    assert len(policy.calls) == 1


class GatedPolicy(RecordingPolicy):
    """Answers only once `gate` is set: a generation that cannot finish before the test says."""

    gate: asyncio.Event

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        self.calls.append((query, adapter))
        await self.gate.wait()
        self.calls.pop()
        return await super().rewrite(query, adapter)


def test_a_miss_does_not_wait_and_the_next_shopper_gets_the_stored_rewrite(db_url: str) -> None:
    """Budget 0 (the default): the miss is answered with the raw query while its generation
    is still blocked; identical misses meanwhile share that one generation; once it lands, any
    process finds it (here: a second rewriter on the same database)."""
    policy = GatedPolicy()
    rewriter = _rewriter(policy, False, "a1", budget_ms=0, db_url=db_url)
    other = _rewriter(RecordingPolicy(), False, "a1", budget_ms=0, db_url=db_url)

    async def go() -> tuple:
        policy.gate = asyncio.Event()
        misses = [await rewriter.rewrite("USB hub", "usb hub") for _ in range(3)]
        in_flight = list(rewriter._pending.values())
        policy.gate.set()
        await asyncio.gather(*in_flight)
        later = await rewriter.rewrite("usb  HUB", "usb hub")
        elsewhere = await other.rewrite("usb hub", "usb hub")
        return misses, len(in_flight), later, elsewhere

    misses, in_flight, later, elsewhere = asyncio.run(go())
    assert [m.source for m in misses] == ["fallback"] * 3
    assert all(m.text == "USB hub" for m in misses)
    assert in_flight == 1  # all three answered while the one shared generation was blocked
    assert policy.calls == [("USB hub", "a1")]
    assert later.source == "cache" and later.text == "usb  HUB usb hub"
    assert elsewhere.source == "cache" and other.policy.calls == []  # type: ignore[attr-defined]
    assert rewriter.store_status()["hit_ratio"] == 0.25


def test_an_unusable_answer_is_stored_and_not_asked_again() -> None:
    policy = RecordingPolicy(ok=False)
    rewriter = _rewriter(policy, False, "a1", budget_ms=0)

    async def go() -> list:
        first = await rewriter.rewrite("Mug", "mug")
        await asyncio.sleep(0.05)
        return [first, await rewriter.rewrite("Mug", "mug"), await rewriter.rewrite("mug", "mug")]

    first, *rest = asyncio.run(go())
    assert first.source == "fallback"
    assert [(r.source, r.text, r.answer) for r in rest] == [
        ("cache", "Mug", None),
        ("cache", "mug", None),
    ]
    assert len(policy.calls) == 1


def test_misses_beyond_the_backlog_are_not_queued() -> None:
    policy = RecordingPolicy(delay_s=0.5)
    rewriter = _rewriter(policy, False, "a1", budget_ms=0, max_pending=2)

    async def go() -> list:
        out = [await rewriter.rewrite(f"q{i}", f"q{i}") for i in range(5)]
        assert len(rewriter._pending) == 2
        await asyncio.sleep(0.01)  # the two queued generations start
        for task in list(rewriter._pending.values()):
            task.cancel()
        return out

    out = asyncio.run(go())
    assert {r.source for r in out} == {"fallback"}
    assert [q for q, _ in policy.calls] == ["q0", "q1"]


class ListingPolicy(RecordingPolicy):
    """Reports every adapter as loaded (the watcher's view of a policy server)."""

    async def list_models(self) -> list[str]:
        return ["base", "a1"]


def test_a_process_preloads_the_new_adapters_rewrites_before_switching(db_url: str) -> None:
    """Another process warmed `a1` into the database; this process's watcher sees the flip,
    fills its LRU with those rewrites, and only then serves `a1`: the first search is a
    local hit, not a miss."""
    from service.db.engine import session_scope
    from service.db.models import Adapter
    from service.domain import RewriteOrigin
    from service.repositories.adapters import set_active
    from service.rewriting.store import StoredAnswer

    async def go() -> tuple:
        warmer = RewriteStore(16, database_url=db_url)
        await warmer.put(
            "usb hub", "a1", DEFAULT_PROMPT.version, StoredAnswer("powered", ""),
            RewriteOrigin.warmup,
        )  # fmt: skip
        with session_scope(db_url) as s:
            s.add(Adapter(name="a1", path="/x", checksum="c", base_model="m", status="candidate"))
        with session_scope(db_url) as s:
            set_active(s, "a1")
        policy = ListingPolicy()
        watcher = ActiveAdapterWatcher(policy, db_url)  # type: ignore[arg-type]
        store = RewriteStore(16, database_url=db_url)
        rewriter = PolicyRewriter(policy, store, watcher, DEFAULT_PROMPT, budget_ms=0)  # type: ignore[arg-type]
        seen: list[tuple[str | None, int]] = []

        async def before(adapter: str | None) -> None:
            await rewriter._preload(adapter)
            seen.append((watcher.current, len(store.local)))

        watcher.before_switch = before
        await watcher.sync_once()
        return seen, watcher.current, await rewriter.rewrite("USB hub", "usb hub"), policy.calls

    seen, current, first, calls = asyncio.run(go())
    assert seen == [(None, 1)]  # preloaded while still serving the previous policy
    assert current == "a1"
    assert first.source == "cache" and first.text == "USB hub powered" and calls == []


def test_deferred_misses_are_served_raw_and_left_to_the_refresh() -> None:
    """The CPU default: no API process generates; the search log is the refresh's queue."""
    from service.domain import MissPolicy

    policy = RecordingPolicy()
    rewriter = _rewriter(policy, False, "a1", budget_ms=1000)
    rewriter.misses = MissPolicy.deferred
    out = asyncio.run(rewriter.rewrite("USB hub", "usb hub"))
    assert (out.source, out.text, out.adapter) == ("fallback", "USB hub", None)
    assert policy.calls == [] and rewriter._pending == {}


def test_the_watcher_reports_each_finished_warmup_once(db_url: str) -> None:
    """A finished warm-up or refresh (by any process) is what lets a process forget the misses
    it remembered; each one is reported once."""
    import time

    from service.db.engine import session_scope
    from service.db.models import Adapter
    from service.repositories.adapters import set_active, set_warmup

    with session_scope(db_url) as s:
        s.add(Adapter(name="a1", path="/x", checksum="c", base_model="m", status="candidate"))
    with session_scope(db_url) as s:
        set_active(s, "a1")
    watcher = ActiveAdapterWatcher(ListingPolicy(), db_url)  # type: ignore[arg-type]
    calls: list[int] = []
    watcher.on_warmup_done = lambda: calls.append(1)

    async def go() -> None:
        await watcher.sync_once()
        assert calls == []  # no warm-up yet
        for finished in (time.time(), time.time() + 1):
            with session_scope(db_url) as s:
                set_warmup(s, "a1", {"status": "done", "finished_at": finished, "updated_at": 0})
            await watcher.sync_once()
            await watcher.sync_once()  # the same warm-up seen again: not reported twice

    asyncio.run(go())
    assert calls == [1, 1]
