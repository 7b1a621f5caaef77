"""In-process policy: transformers + peft, same interface as the vLLM client.

For development without a vLLM server (`policy_backend=local`) and as the reference the vLLM
path is checked against: greedy decoding in fp32 here gives the same tokens as vLLM in fp32.
Generation runs in a worker thread (`asyncio.to_thread`) so the event loop stays responsive,
behind one lock: torch already uses every core for a single generation, so parallel calls
would only thrash.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.domain import BASE_ADAPTER
from service.policy.prompt import DEFAULT_PROMPT, PromptConfig
from service.policy.protocol import AdapterError, PolicyError, RewriteResult

if TYPE_CHECKING:
    import torch


class LocalPolicy:
    """Base model plus named peft LoRA adapters in this process; greedy rewrites."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        prompt: PromptConfig = DEFAULT_PROMPT,
        max_tokens: int | None = None,
        max_chars: int = 256,
        dtype: torch.dtype | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = Path(model_path)
        self.prompt = prompt
        self.max_tokens = max_tokens if max_tokens is not None else prompt.max_tokens
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.base_model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=dtype or torch.float32
        ).eval()
        self._peft_model: Any = None  # peft.PeftModel once an adapter is loaded
        self._adapters: dict[str, str] = {}

    # -- generation -----------------------------------------------------------------------

    async def rewrite(self, query: str, adapter: str | None = None) -> RewriteResult:
        return await asyncio.to_thread(self.rewrite_sync, query, adapter)

    def rewrite_sync(self, query: str, adapter: str | None = None) -> RewriteResult:
        """Greedy rewrite, blocking; the async `rewrite` runs this in a thread."""
        started = time.perf_counter()
        completion, finish_reason, n_tokens = self.generate(query, adapter)
        answer = self.prompt.parse(
            completion, query, truncated=finish_reason == "length", max_chars=self.max_chars
        )
        text, ok = self.prompt.search_text(query, answer), answer is not None
        return RewriteResult(
            text=text,
            answer=answer,
            raw_completion=completion,
            adapter=adapter,
            prompt_version=self.prompt.version,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            ok=ok,
            finish_reason=finish_reason,
            completion_tokens=n_tokens,
        )

    def generate(self, query: str, adapter: str | None = None) -> tuple[str, str, int]:
        """Greedy completion for `query`: (text cut at the first stop string, finish, tokens).

        Mirrors vLLM's chat endpoint: chat template rendered to text, tokenised without extra
        special tokens, special tokens skipped when decoding, output cut *before* a stop string.
        """
        import torch

        prompt_text = self.tokenizer.apply_chat_template(
            self.prompt.build_messages(query), tokenize=False, add_generation_prompt=True
        )
        inputs = self.tokenizer(prompt_text, add_special_tokens=False, return_tensors="pt")
        eos = self.tokenizer.eos_token_id
        with self._lock, torch.inference_mode():
            model = self._select(adapter)
            output = model.generate(
                **inputs,
                max_new_tokens=self.max_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id or eos,
                stop_strings=list(self.prompt.stop),
                tokenizer=self.tokenizer,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.prompt.stop) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut], "stop", len(new_tokens)
        if new_tokens and new_tokens[-1] == eos:
            return text, "stop", len(new_tokens)
        return text, "length", len(new_tokens)

    def _select(self, adapter: str | None) -> Any:
        """The model to generate with; the caller holds the lock."""
        if adapter in (None, BASE_ADAPTER):
            if self._peft_model is None:
                return self.base_model
            return _BaseView(self._peft_model)
        if adapter not in self._adapters:
            raise PolicyError(f"adapter {adapter!r} is not loaded")
        self._peft_model.set_adapter(adapter)
        return self._peft_model

    # -- adapters ---------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path | str, load_inplace: bool = False) -> None:
        await asyncio.to_thread(self.load_adapter_sync, name, path, load_inplace)

    def load_adapter_sync(self, name: str, path: Path | str, load_inplace: bool = False) -> None:
        from peft import PeftModel

        if name == BASE_ADAPTER:
            raise AdapterError(f"{name!r} is reserved for the base model")
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"not a peft adapter folder: {path}")
        with self._lock:
            if name in self._adapters:
                if not load_inplace:
                    raise AdapterError(f"adapter {name!r} already loaded; use load_inplace")
                self._delete(name)
            try:
                if self._peft_model is None:
                    self._peft_model = PeftModel.from_pretrained(
                        self.base_model, path, adapter_name=name, is_trainable=False
                    ).eval()
                else:
                    self._peft_model.load_adapter(path, adapter_name=name, is_trainable=False)
            except Exception as exc:  # peft raises many types for bad folders
                raise AdapterError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
            self._adapters[name] = str(path)

    async def unload_adapter(self, name: str) -> None:
        await asyncio.to_thread(self.unload_adapter_sync, name)

    def unload_adapter_sync(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise AdapterError(f"adapter {name!r} is not loaded")
            self._delete(name)

    def _delete(self, name: str) -> None:
        del self._adapters[name]
        if not self._adapters:
            # Strip the LoRA layers so the base model runs without adapter overhead again.
            self.base_model = self._peft_model.unload()
            self._peft_model = None
            return
        if self._peft_model.active_adapter == name:
            self._peft_model.set_adapter(next(iter(self._adapters)))
        self._peft_model.delete_adapter(name)

    async def list_models(self) -> list[str]:
        return [BASE_ADAPTER, *self._adapters]

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class _BaseView:
    """Generate with a PeftModel's adapters disabled, i.e. with the plain base model."""

    def __init__(self, peft_model: Any) -> None:
        self._peft_model = peft_model

    def generate(self, **kwargs: Any) -> Any:
        with self._peft_model.disable_adapter():
            return self._peft_model.generate(**kwargs)
