"""The in-process transformers+peft policy: greedy rewrites and adapter switching (no vLLM)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.policy.local import LocalPolicy
from service.policy.protocol import AdapterError, Policy, PolicyError

try:  # the root directory or tests/ is on sys.path depending on the rootdir layout
    from tests.vllm_fixture import policy_model_dir, random_adapters
except ModuleNotFoundError:
    from vllm_fixture import policy_model_dir, random_adapters  # type: ignore

__all__ = ["policy_model_dir", "random_adapters"]

pytestmark = pytest.mark.slow

QUERY = "wireless mouse"


@pytest.fixture(scope="module")
def policy(policy_model_dir: Path) -> LocalPolicy:
    return LocalPolicy(policy_model_dir, max_tokens=24)


def test_local_policy_switches_and_unloads_adapters(
    policy: LocalPolicy, random_adapters: dict[str, Path]
) -> None:
    assert isinstance(policy, Policy)
    base = policy.rewrite_sync(QUERY)
    assert base.text.strip() and base.adapter is None
    assert policy.rewrite_sync(QUERY).raw_completion == base.raw_completion  # greedy

    async def run() -> None:
        for name, path in random_adapters.items():
            await policy.load_adapter(name, path)
        assert await policy.list_models() == ["base", *random_adapters]
        a = await policy.rewrite(QUERY, "rand-a")
        b = await policy.rewrite(QUERY, "rand-b")
        assert a.adapter == "rand-a"
        # Two random adapters may agree on one short query; they must not agree on all.
        pairs = [(a.raw_completion, b.raw_completion)] + [
            ((await policy.rewrite(q, "rand-a")).raw_completion,
             (await policy.rewrite(q, "rand-b")).raw_completion)
            for q in ("usb c charging cable", "noise cancelling headphones")
        ]  # fmt: skip
        assert any(x != y for x, y in pairs), pairs
        # Switching back to the base model must not leave an adapter active.
        assert (await policy.rewrite(QUERY)).raw_completion == base.raw_completion

        with pytest.raises(AdapterError):
            await policy.load_adapter("rand-a", random_adapters["rand-b"])
        await policy.load_adapter("rand-a", random_adapters["rand-b"], load_inplace=True)
        assert (await policy.rewrite(QUERY, "rand-a")).raw_completion == b.raw_completion

        for name in random_adapters:
            await policy.unload_adapter(name)
        assert await policy.list_models() == ["base"]
        assert (await policy.rewrite(QUERY)).raw_completion == base.raw_completion
        with pytest.raises(PolicyError):
            await policy.rewrite(QUERY, "rand-a")
        with pytest.raises(AdapterError):
            await policy.unload_adapter("rand-a")

    asyncio.run(run())


def test_local_policy_rejects_bad_adapter_folders(policy: LocalPolicy, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="not a peft adapter"):
        policy.load_adapter_sync("x", tmp_path)
    with pytest.raises(AdapterError, match="reserved"):
        policy.load_adapter_sync("base", tmp_path)
