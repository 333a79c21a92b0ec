"""Chat clients for program generation: OpenAI-compatible, local ``transformers``, and replay of recorded responses.

Every client answers ``complete(messages, n=..., temperature=..., max_tokens=...) -> Completion`` (``n`` samples,
token usage, cost) and shares:

* a content-addressed on-disk **response cache** (JSON; key = sha256 of model, messages and sampling settings), so
  a re-run costs nothing and works offline;
* **token and cost accounting** (:attr:`ChatClient.totals`) with a configurable :class:`PriceTable` (USD per 1K
  prompt / completion tokens; defaults from Alchemist's ``modes/base_mode.py``, spec §4.2);
* **retries with exponential backoff** and jitter on connection errors, timeouts, 429 and 5xx, and a
  **concurrency limit** for :meth:`ChatClient.complete_many`.

:class:`OpenAIChatClient` uses the maintained ``openai`` library against any OpenAI-compatible server (OpenAI,
vLLM, llama.cpp, Ollama): base URL and key from the arguments or the environment (``LWS_LLM_BASE_URL`` /
``OPENAI_BASE_URL``, ``LWS_LLM_API_KEY`` / ``OPENAI_API_KEY``). Servers that ignore ``n`` are topped up with
single-sample calls. :class:`TransformersClient` runs ``generate`` on a local model folder (never downloads).
:class:`ReplayClient` serves a folder of recorded responses in the layout of ``lightning_ws/data/programs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import atomic_write_text

__all__ = ["Completion", "PriceTable", "ResponseCache", "ChatClient", "OpenAIChatClient", "TransformersClient",
           "ReplayClient", "make_client", "RECORDED_DIR"]

log = logging.getLogger(__name__)

#: The recorded prompts and responses shipped with the package (see its README for provenance).
RECORDED_DIR = Path(__file__).resolve().parent.parent / "data" / "programs"

Messages = Sequence[Mapping[str, str]]


@dataclass
class Completion:
    """``n`` sampled answers to one prompt.

    Attributes:
        texts: the answers.
        model: the model that wrote them.
        usage: ``{"prompt_tokens", "completion_tokens"}`` summed over the calls made (empty when unknown).
        cost_usd: cost from the price table (``None`` when the model has no price or usage is unknown).
        cached: served from the response cache (no call was made).
        meta: client-specific details (request ids, replay source, ...).
    """

    texts: list[str]
    model: str
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"texts": self.texts, "model": self.model, "usage": self.usage, "cost_usd": self.cost_usd,
                "meta": self.meta}


class PriceTable:
    """USD per 1,000 prompt / completion tokens, by model name (longest matching prefix wins).

    Args:
        prices: ``{model: (prompt_per_1k, completion_per_1k)}``; default :attr:`DEFAULT` (Alchemist's table).
    """

    DEFAULT: dict[str, tuple[float, float]] = {
        "gpt-3.5-turbo": (0.0005, 0.0015), "gpt-4": (0.03, 0.06), "claude-2.1": (0.008, 0.024),
        "claude-3-sonnet": (0.003, 0.015),
    }

    def __init__(self, prices: Mapping[str, Sequence[float]] | None = None) -> None:
        table = self.DEFAULT if prices is None else prices
        self.prices = {str(k): (float(v[0]), float(v[1])) for k, v in table.items()}

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        """Read ``{model: [prompt_per_1k, completion_per_1k]}`` from JSON or YAML."""
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping model -> [prompt_per_1k, completion_per_1k].")
        return cls(data)

    def cost(self, model: str, usage: Mapping[str, int]) -> float | None:
        """Cost of ``usage`` for ``model``; ``None`` when the model is not in the table or usage is unknown."""
        if not usage:
            return None
        match = max((k for k in self.prices if model.startswith(k)), key=len, default=None)
        if match is None:
            return None
        p, c = self.prices[match]
        return (usage.get("prompt_tokens", 0) * p + usage.get("completion_tokens", 0) * c) / 1000.0


class ResponseCache:
    """Content-addressed JSON cache of completions (``root/<key[:2]>/<key>.json``), written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(model: str, messages: Messages, **settings: Any) -> str:
        blob = json.dumps({"model": model, "messages": [dict(m) for m in messages], **settings}, sort_keys=True,
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self._path(key)
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            log.warning("ignoring a corrupt cache entry %s", p)
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps(value, ensure_ascii=False, indent=1))


class ChatClient(ABC):
    """Base class: caching, accounting, retries and concurrency around :meth:`_complete`.

    Args:
        model: model name (used in cache keys and prices).
        cache_dir: response-cache folder (``None`` = no cache).
        prices: a :class:`PriceTable` (default: Alchemist's table).
        max_retries: retries of a failed call (transient errors only).
        backoff: first retry delay in seconds; doubles each retry, with up to 25% jitter, capped at 60 s.
        concurrency: parallel requests in :meth:`complete_many`.
        seed: seed of the jitter.
    """

    def __init__(self, model: str, *, cache_dir: str | Path | None = None, prices: PriceTable | None = None,
                 max_retries: int = 4, backoff: float = 1.0, concurrency: int = 4, seed: int = 0) -> None:
        if max_retries < 0 or backoff < 0 or concurrency < 1:
            raise ConfigError("max_retries and backoff must be >= 0 and concurrency >= 1.")
        self.model = model
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.prices = prices or PriceTable()
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = concurrency
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.totals = {"calls": 0, "cached": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
                       "cost_usd": 0.0}

    def complete(self, messages: Messages, *, n: int = 1, temperature: float = 1.0, max_tokens: int = 1000,
                 **context: Any) -> Completion:
        """``n`` answers to ``messages`` (served from the cache when possible).

        ``context`` (``prompt_id``, ``task``) is passed to the client (the replay client uses it) and never changes
        the cache key.
        """
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}.")
        key = None
        if self.cache is not None:
            key = ResponseCache.key(self.model, messages, n=n, temperature=temperature, max_tokens=max_tokens)
            hit = self.cache.get(key)
            if hit is not None and len(hit.get("texts", [])) >= n:
                with self._lock:
                    self.totals["cached"] += 1
                return Completion(texts=list(hit["texts"][:n]), model=hit.get("model", self.model),
                                  usage=dict(hit.get("usage") or {}), cost_usd=hit.get("cost_usd"), cached=True,
                                  meta=dict(hit.get("meta") or {}))
        res = self._complete(messages, n=n, temperature=temperature, max_tokens=max_tokens, **context)
        if res.cost_usd is None:
            res.cost_usd = self.prices.cost(res.model, res.usage)
        with self._lock:
            self.totals["calls"] += 1
            self.totals["prompt_tokens"] += int(res.usage.get("prompt_tokens", 0))
            self.totals["completion_tokens"] += int(res.usage.get("completion_tokens", 0))
            self.totals["cost_usd"] += float(res.cost_usd or 0.0)
        if self.cache is not None and key is not None:
            self.cache.put(key, res.to_dict())
        return res

    def complete_many(self, requests: Sequence[dict[str, Any]]) -> list[Completion]:
        """Run several :meth:`complete` calls (dicts of its arguments) with at most ``concurrency`` in flight."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda r: self.complete(**r), requests))

    def _retry(self, fn: Any, transient: tuple[type[BaseException], ...]) -> Any:
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except transient as err:
                if attempt == self.max_retries:
                    raise
                with self._lock:
                    self.totals["retries"] += 1
                    wait = min(60.0, delay * (1 + 0.25 * self._rng.random()))
                log.warning("LLM call failed (%s); retry %d/%d in %.1fs", type(err).__name__, attempt + 1,
                            self.max_retries, wait)
                time.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    @abstractmethod
    def _complete(self, messages: Messages, *, n: int, temperature: float, max_tokens: int,
                  **context: Any) -> Completion:
        """Make the call(s); return the answers and usage."""


class OpenAIChatClient(ChatClient):
    """Any OpenAI-compatible chat-completions server, through the ``openai`` library.

    Args:
        model: model name on the server.
        base_url: server URL (default: ``$LWS_LLM_BASE_URL``, ``$OPENAI_BASE_URL``, else OpenAI's).
        api_key: key (default: ``$LWS_LLM_API_KEY``, ``$OPENAI_API_KEY``; local servers accept any string).
        timeout: seconds per request.
        **kwargs: :class:`ChatClient` arguments (cache, prices, retries, backoff, concurrency).
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        try:
            import openai
        except ImportError as err:  # pragma: no cover - declared in the `programs` extra
            raise ConfigError("OpenAIChatClient needs the openai package: pip install 'lightning-ws[programs]'.") \
                from err
        self._openai = openai
        base_url = base_url or os.environ.get("LWS_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("LWS_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if api_key is None:
            if base_url is None:
                raise ConfigError("no API key: set LWS_LLM_API_KEY (or OPENAI_API_KEY), or point LWS_LLM_BASE_URL at "
                                  "a local OpenAI-compatible server (vLLM, llama.cpp, Ollama).")
            api_key = "not-needed"
        self.base_url = base_url
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self._transient = tuple(getattr(openai, n) for n in ("APIConnectionError", "APITimeoutError",
                                                              "RateLimitError", "InternalServerError")
                                if hasattr(openai, n))

    def _call(self, messages: Messages, n: int, temperature: float, max_tokens: int) -> Any:
        return self._retry(lambda: self._client.chat.completions.create(
            model=self.model, messages=[dict(m) for m in messages], n=n, temperature=temperature,
            max_tokens=max_tokens), self._transient)

    def _complete(self, messages: Messages, *, n: int, temperature: float, max_tokens: int,
                  **context: Any) -> Completion:
        texts: list[str] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        model = self.model
        ids = []
        asked = n
        while len(texts) < n:
            resp = self._call(messages, asked, temperature, max_tokens)
            model = getattr(resp, "model", None) or model
            ids.append(getattr(resp, "id", None))
            for ch in resp.choices or []:
                texts.append((ch.message.content or "") if ch.message is not None else "")
            u = getattr(resp, "usage", None)
            if u is not None:
                usage["prompt_tokens"] += int(getattr(u, "prompt_tokens", 0) or 0)
                usage["completion_tokens"] += int(getattr(u, "completion_tokens", 0) or 0)
            if not resp.choices:
                raise DataError(f"the server at {self.base_url or 'api.openai.com'} returned no choices.")
            asked = 1  # servers that ignore n: top up one sample at a time
        return Completion(texts=texts[:n], model=model, usage=usage, meta={"ids": ids, "base_url": self.base_url})


class TransformersClient(ChatClient):
    """A local causal LM through ``transformers`` ``generate`` (the model folder must exist; nothing is downloaded).

    Args:
        model_path: a local model folder (config, weights, tokenizer).
        device: torch device.
        **kwargs: :class:`ChatClient` arguments (the price table usually has no entry: cost is ``None``).
    """

    def __init__(self, model_path: str, *, device: str = "cpu", seed: int = 0, **kwargs: Any) -> None:
        if not Path(model_path).is_dir():
            raise DataFileNotFoundError(f"model folder not found: {model_path}. TransformersClient runs a local "
                                        f"model only; download it yourself first.")
        super().__init__(str(model_path), seed=seed, **kwargs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.lm = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True).to(device).eval()
        self.device = device
        self._seed = seed

    def _prompt(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                                      add_generation_prompt=True)
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"

    def _complete(self, messages: Messages, *, n: int, temperature: float, max_tokens: int,
                  **context: Any) -> Completion:
        import torch

        enc = self.tokenizer(self._prompt(messages), return_tensors="pt").to(self.device)
        state = torch.random.get_rng_state()  # generate() samples from the global RNG: seed it, then restore it
        torch.manual_seed(self._seed)
        try:
            with torch.no_grad():
                out = self.lm.generate(**enc, do_sample=temperature > 0, temperature=max(temperature, 1e-5),
                                       max_new_tokens=max_tokens, num_return_sequences=n,
                                       pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        finally:
            torch.random.set_rng_state(state)
        plen = enc["input_ids"].shape[1]
        texts = [self.tokenizer.decode(seq[plen:], skip_special_tokens=True) for seq in out]
        completion = int(sum(int((seq[plen:] != (self.tokenizer.pad_token_id or -1)).sum()) for seq in out))
        return Completion(texts=texts, model=self.model, usage={"prompt_tokens": int(plen) * n,
                                                                "completion_tokens": completion})


class ReplayClient(ChatClient):
    """Serve recorded responses (``<root>/<task>/prompts/<prompt_id>.json``, ``responses/<prompt_id>/<k>.json``).

    A request is matched to a recorded prompt by its exact system + user text; failing that, by ``task`` and
    ``prompt_id`` (passed by :class:`~lightning_ws.programs.generate.ProgramGenerator`), with a warning that the
    rendered prompt differs from the recorded one (``strict=True`` makes that an error). Asking for more samples
    than were recorded is an error.

    Args:
        root: the recorded folder (default: the copy shipped in ``lightning_ws/data/programs``).
        strict: require an exact prompt match.
    """

    def __init__(self, root: str | Path | None = None, *, strict: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("max_retries", 0)
        super().__init__("replay", **kwargs)
        self.root = Path(root) if root is not None else RECORDED_DIR
        if not self.root.is_dir():
            raise DataFileNotFoundError(f"recorded responses folder not found: {self.root}.")
        self.strict = strict
        self.prompts: dict[tuple[str, str], dict[str, Any]] = {}
        for f in sorted(self.root.glob("*/prompts/*.json")):
            d = json.loads(f.read_text(encoding="utf-8"))
            key = (d.get("task", f.parent.parent.name), d.get("prompt_id", f.stem))
            self.prompts[key] = {**d, "_dir": f.parent.parent}
        if not self.prompts:
            raise DataError(f"{self.root}: no recorded prompts (<task>/prompts/<prompt_id>.json).")

    def _find(self, messages: Messages, task: str | None, prompt_id: str | None) -> tuple[tuple[str, str], bool]:
        sys_msg = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in messages if m.get("role") == "user"), "")
        for key, d in self.prompts.items():
            if d.get("user") == user and d.get("system", "") == sys_msg:
                return key, True
        if task is not None and prompt_id is not None and (task, prompt_id) in self.prompts:
            if self.strict:
                raise DataError(f"the rendered prompt for {task}/{prompt_id} differs from the recorded one "
                                f"(strict replay).")
            log.warning("replay: the rendered prompt for %s/%s differs from the recorded one; serving the recorded "
                        "responses by prompt id", task, prompt_id)
            return (task, prompt_id), False
        raise DataError(f"no recorded prompt matches this request (task={task}, prompt_id={prompt_id}); recorded: "
                        f"{sorted('/'.join(k) for k in self.prompts)}.")

    def _complete(self, messages: Messages, *, n: int, temperature: float, max_tokens: int,
                  task: str | None = None, prompt_id: str | None = None, **context: Any) -> Completion:
        key, exact = self._find(messages, task, prompt_id)
        folder = self.prompts[key]["_dir"] / "responses" / key[1]
        files = sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
        if len(files) < n:
            raise DataError(f"{folder}: {len(files)} recorded samples, {n} requested.")
        texts, model, usage = [], "replay", {}
        for f in files[:n]:
            d = json.loads(f.read_text(encoding="utf-8"))
            ch = d.get("choices") or []
            texts.append(ch[0]["message"]["content"] if ch else "")
            model = d.get("model", model)
            u = d.get("usage")
            if isinstance(u, dict):
                for k2 in ("prompt_tokens", "completion_tokens"):
                    usage[k2] = usage.get(k2, 0) + int(u.get(k2, 0))
        return Completion(texts=texts, model=model, usage=usage,
                          meta={"replay": "/".join(key), "exact_prompt_match": exact})


def make_client(kind: str, **kwargs: Any) -> ChatClient:
    """``openai`` (:class:`OpenAIChatClient`), ``transformers`` (:class:`TransformersClient`) or ``replay``."""
    kinds = {"openai": OpenAIChatClient, "transformers": TransformersClient, "replay": ReplayClient}
    if kind not in kinds:
        raise ConfigError(f"unknown client {kind!r}; choose from {sorted(kinds)}.")
    return kinds[kind](**kwargs)
