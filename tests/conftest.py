"""Shared fixtures: tiny randomly initialised models of every supported family, saved to disk.

Each tiny model is built from a transformers config (2-3 layers, width 32, GQA where the family
has it, biases, post-branch norms and softcapping where it has them), given non-trivial norm
weights and biases, saved as safetensors with a small byte-level BPE tokenizer trained here (no
hub access), and loaded back through ``ltt.load(path)``: the real loading path.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LTT_QUIET", "1")

VOCAB = 320
PROMPT = "When Mary and John went to the store, John gave a drink to"
CORPUS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "A quick brown fox jumps over the lazy dog; the dog sleeps.",
    "Tracing a language model shows where information flows, token by token.",
    "1 2 3 4 5 6 7 8 9 10, <img src=x onerror=alert(1)> and unicode: café, naïve, 東京.",
]


#: Test files that need no torch/transformers model: ``make test-core`` (``-m core``) runs them.
CORE_FILES = {
    "test_build.py", "test_core_errors.py", "test_core_reference.py", "test_fuzz.py", "test_graph.py",
    "test_nodes.py", "test_prune.py", "test_sparse_kernels.py", "test_threads.py", "test_progress.py",
    "test_layout.py", "test_face.py",
}
#: Long files: still part of ``make test``; ``-m "not slow"`` leaves them out.
SLOW_FILES = {"test_wheel.py", "test_notebooks.py"}


def pytest_ignore_collect(collection_path, config):
    """Under ``-m core`` the other test files are not even imported (their imports load torch)."""
    if config.getoption("markexpr", "") == "core" and collection_path.suffix == ".py" \
            and collection_path.name.startswith("test_"):
        return collection_path.name not in CORE_FILES or None
    return None


def pytest_collection_modifyitems(config, items):
    """Mark every test by its file (and the browser fixture): ``core``, ``models``, ``browser``,
    ``slow`` (registered in pyproject.toml)."""
    for item in items:
        name = item.path.name
        if name in CORE_FILES:
            item.add_marker(pytest.mark.core)
        else:
            item.add_marker(pytest.mark.models)
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
        if name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def pytest_report_header(config):
    try:
        import ltt

        info = ltt._core.build_info()
    except Exception as exc:  # the core may not be built yet; say so instead of failing here
        info = f"unavailable ({type(exc).__name__}: {exc})"
    return f"ltt._core.build_info(): {info}"


def _make_tokenizer(bos: bool):
    """A byte-level BPE tokenizer trained on CORPUS, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 16,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS * 4, trainer=trainer)
    if bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tk.token_to_id("<bos>"))]
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def _config(model_type: str, **kw):
    """A config by ``model_type`` (types whose config class is not exported at the top level)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type](**kw)


def tiny_configs() -> dict:
    """Family key -> (config, tokenizer adds BOS). Widths are tiny; every quirk is switched on."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, initializer_range=0.1, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    llama_like = dict(common, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return {
        "gpt2": (tf.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, **common), False),
        "gpt_neo": (tf.GPTNeoConfig(max_position_embeddings=64, hidden_size=32, num_layers=2,
                                    num_heads=4, attention_types=[[["global", "local"], 1]],
                                    window_size=3, intermediate_size=64, **common), False),
        "gpt_neox": (tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64,
                                      use_parallel_residual=True, **common), False),
        "gpt_neox_seq": (tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=64,
                                          use_parallel_residual=False, **common), False),
        "gptj": (tf.GPTJConfig(n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                               n_inner=64, **common), False),
        "opt": (tf.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                             max_position_embeddings=64, word_embed_proj_dim=16,
                             do_layer_norm_before=True, **common), True),
        "llama": (tf.LlamaConfig(attention_bias=True, mlp_bias=True, **llama_like), True),
        "mistral": (tf.MistralConfig(sliding_window=4, **llama_like), True),
        "qwen2": (tf.Qwen2Config(**llama_like), False),
        "qwen3": (tf.Qwen3Config(head_dim=8, **llama_like), False),
        "gemma": (tf.GemmaConfig(head_dim=8, **llama_like), True),
        "gemma2": (tf.Gemma2Config(head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                                   attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                   attention_bias=True, **llama_like), True),
        "gemma3": (tf.Gemma3TextConfig(head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                                       final_logit_softcapping=3.0, sliding_window_pattern=2,
                                       **llama_like), True),
        "phi": (tf.PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64, **common), False),
        "phi3": (tf.Phi3Config(**llama_like), True),
        "falcon": (tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_kv_heads=2, new_decoder_architecture=True, bias=False,
                                   max_position_embeddings=64, **common), False),
        "falcon_seq": (tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       new_decoder_architecture=False, multi_query=False,
                                       parallel_attn=False, bias=True,
                                       max_position_embeddings=64, **common), False),
        "falcon_mq": (tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      new_decoder_architecture=False, multi_query=True,
                                      parallel_attn=True, alibi=True, bias=True,
                                      max_position_embeddings=64, **common), False),
        # -- issue 16: the newer dense families ----------------------------------------------
        "starcoder2": (tf.Starcoder2Config(sliding_window=4, use_bias=True, **llama_like), False),
        "cohere": (tf.CohereConfig(logit_scale=0.5, use_qk_norm=True, **llama_like), True),
        "cohere2": (tf.Cohere2Config(sliding_window=4, logit_scale=0.5,
                                      layer_types=["sliding_attention", "full_attention"], **llama_like), True),
        "stablelm": (tf.StableLmConfig(partial_rotary_factor=0.5, use_qkv_bias=True, **llama_like), True),
        "stablelm_par": (tf.StableLmConfig(partial_rotary_factor=0.25, use_parallel_residual=True,
                                           qk_layernorm=True, **llama_like), True),
        "olmo": (tf.OlmoConfig(clip_qkv=0.3, **llama_like), False),
        "olmo2": (tf.Olmo2Config(**llama_like), False),
        "olmo3": (tf.Olmo3Config(sliding_window=4, **llama_like), False),
        "exaone4": (tf.Exaone4Config(sliding_window=4, sliding_window_pattern=2, head_dim=8, **llama_like), False),
        "glm4": (tf.Glm4Config(head_dim=8, partial_rotary_factor=0.5, **llama_like), False),
        "glm": (tf.GlmConfig(head_dim=8, **llama_like), False),
        "smollm3": (tf.SmolLM3Config(no_rope_layer_interval=2, **llama_like), True),
        "ernie4_5": (tf.Ernie4_5Config(head_dim=8, use_bias=True, **llama_like), True),
        "ministral": (tf.MinistralConfig(sliding_window=4, head_dim=8, **llama_like), True),
        "helium": (tf.HeliumConfig(head_dim=8, **llama_like), True),
        "seed_oss": (tf.SeedOssConfig(head_dim=8, attention_bias=True, attention_out_bias=True,
                                      **llama_like), True),
        "arcee": (tf.ArceeConfig(head_dim=8, **llama_like), True),
        "hunyuan_v1_dense": (tf.HunYuanDenseV1Config(head_dim=8, **llama_like), True),
        "apertus": (tf.ApertusConfig(head_dim=8, **llama_like), True),
        "nemotron": (tf.NemotronConfig(head_dim=8, partial_rotary_factor=0.5, **llama_like), True),
        "gpt_bigcode": (tf.GPTBigCodeConfig(n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                            multi_query=True, **common), False),
        "gpt_bigcode_mha": (tf.GPTBigCodeConfig(n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                multi_query=False, **common), False),
        "bloom": (tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common), True),
        "mpt": (tf.MptConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=64,
                             attn_config={"clip_qkv": 0.5, "alibi": True}, **common), False),
        "granite": (tf.GraniteConfig(embedding_multiplier=3.0, residual_multiplier=0.4,
                                     attention_multiplier=0.2, logits_scaling=4.0, attention_bias=True,
                                     mlp_bias=True, **llama_like), True),
        "exaone": (_config("exaone", **llama_like), True),
        "internlm3": (_config("internlm3", head_dim=8, **llama_like), True),
        "ministral3": (tf.Ministral3Config(head_dim=8, **llama_like), True),
        "cwm": (tf.CwmConfig(head_dim=8, **llama_like), True),
        "jais2": (tf.Jais2Config(head_dim=8, **llama_like), True),
        "youtu": (tf.YoutuConfig(**dict(llama_like, num_key_value_heads=4, kv_lora_rank=16,
                                        q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4,
                                        v_head_dim=8)), True),
        "vaultgemma": (tf.VaultGemmaConfig(head_dim=8, query_pre_attn_scalar=8, final_logit_softcapping=3.0,
                                           **llama_like), True),
        "nanochat": (tf.NanoChatConfig(head_dim=8, final_logit_softcapping=3.0, **llama_like), True),
        "persimmon": (tf.PersimmonConfig(**dict(llama_like, num_key_value_heads=4, qk_layernorm=True,
                                                partial_rotary_factor=0.5)), True),
        # -- mixture-of-experts ----------------------------------------------------------------
        "granitemoeshared": (tf.GraniteMoeSharedConfig(**dict(
            llama_like, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=24,
            embedding_multiplier=3.0, residual_multiplier=0.4, logits_scaling=4.0)), True),
        "deepseek_v2": (tf.DeepseekV2Config(**dict(
            llama_like, num_key_value_heads=4, intermediate_size=40, n_routed_experts=4,
            num_experts_per_tok=2, moe_intermediate_size=8, n_shared_experts=1, first_k_dense_replace=1,
            kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)), True),
        "mellum": (tf.MellumConfig(**dict(llama_like, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=16, head_dim=8)), True),
        "phimoe": (tf.PhimoeConfig(**dict(llama_like, num_local_experts=4, num_experts_per_tok=2)), True),
        "glm4_moe": (tf.Glm4MoeConfig(**dict(llama_like, n_routed_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=8, n_shared_experts=1,
                                             first_k_dense_replace=1, intermediate_size=40, head_dim=8,
                                             n_group=2, topk_group=1)), True),
        "ernie4_5_moe": (tf.Ernie4_5_MoeConfig(**dict(llama_like, moe_num_experts=4, moe_k=2,
                                                      moe_intermediate_size=8, moe_num_shared_experts=1,
                                                      moe_layer_start_index=1, intermediate_size=40,
                                                      head_dim=8)), True),
        "solar_open": (tf.SolarOpenConfig(**dict(llama_like, n_routed_experts=4, num_experts_per_tok=2,
                                                 moe_intermediate_size=8, n_shared_experts=1,
                                                 first_k_dense_replace=1, intermediate_size=40,
                                                 head_dim=8, n_group=1, topk_group=1)), True),
        "hunyuan_v1_moe": (tf.HunYuanMoEV1Config(**dict(llama_like, num_experts=4, moe_topk=2,
                                                        head_dim=8)), True),
        "flex_olmo": (tf.FlexOlmoConfig(**dict(llama_like, num_experts=4, num_experts_per_tok=2)), True),
        "granitemoe": (tf.GraniteMoeConfig(num_local_experts=4, num_experts_per_tok=2,
                                           embedding_multiplier=3.0, residual_multiplier=0.4,
                                           attention_multiplier=0.2, logits_scaling=4.0,
                                           **llama_like), True),
        "llama4": (tf.Llama4TextConfig(**dict(
            llama_like, num_local_experts=4, num_experts_per_tok=1, head_dim=8, intermediate_size=16,
            intermediate_size_mlp=80, interleave_moe_layer_step=2, attention_chunk_size=4,
            no_rope_layers=[1, 0])), True),
        "mixtral": (tf.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
                                     **llama_like), True),
        "qwen2_moe": (tf.Qwen2MoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                        shared_expert_intermediate_size=24, qkv_bias=True,
                                        **llama_like), False),
        "qwen3_moe": (tf.Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                        head_dim=8, **llama_like), False),
        "olmoe": (tf.OlmoeConfig(num_experts=4, num_experts_per_tok=2, **llama_like), False),
        "deepseek_v3": (tf.DeepseekV3Config(**dict(
            llama_like, num_key_value_heads=4, intermediate_size=40, n_routed_experts=4,
            num_experts_per_tok=2, moe_intermediate_size=8, n_shared_experts=1, first_k_dense_replace=1,
            n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8,
            qk_rope_head_dim=4, v_head_dim=8)), True),
        "gpt_oss": (tf.GptOssConfig(**dict(llama_like, num_local_experts=4, num_experts_per_tok=2,
                                           head_dim=8, sliding_window=4,
                                           layer_types=["sliding_attention", "full_attention"])), False),
    }


def build_tiny(key: str, seed: int = 0):
    """The tiny model and tokenizer of a family key (in memory, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    config, bos = tiny_configs()[key]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # biases and norm weights: make them matter
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    return model, _make_tokenizer(bos)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """``tiny_dir(key)`` -> a directory holding that family's tiny model and tokenizer."""
    import torch

    torch.set_num_threads(1)
    made: dict[str, str] = {}

    def get(key: str) -> str:
        if key not in made:
            model, tok = build_tiny(key)
            path = tmp_path_factory.mktemp(f"tiny_{key}")
            model.save_pretrained(path)
            tok.save_pretrained(path)
            made[key] = str(path)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """``tiny_model(key)`` -> ``ltt.load(tiny_dir(key))``, cached for the session."""
    import ltt

    loaded: dict = {}

    def get(key: str):
        if key not in loaded:
            loaded[key] = ltt.load(tiny_dir(key))
        return loaded[key]

    return get


def chromium_path() -> str:
    """Debian's chromium for the browser tests (``LTT_CHROMIUM`` overrides the path).

    The browser tests are part of the suite, not optional: without the browser they fail with
    the command that installs it (``make test`` runs it)."""
    import os
    import shutil

    path = os.environ.get("LTT_CHROMIUM", "/usr/bin/chromium")
    found = path if os.path.exists(path) else shutil.which(path)
    if not found:
        pytest.fail(
            f"no chromium at {path!r}: install Debian's browser with "
            "`apt-get update && apt-get install -y chromium` (make test does), "
            "or point LTT_CHROMIUM at one",
            pytrace=False,
        )
    return found


def node_path() -> str:
    """Debian's node for the JavaScript unit tests (``LTT_NODE`` overrides the path).

    Like the browser, node is part of the suite: without it these tests fail with the command
    that installs it (``make test`` runs ``make node``), they do not skip."""
    import os
    import shutil

    path = os.environ.get("LTT_NODE", "node")
    found = path if os.path.isabs(path) and os.path.exists(path) else shutil.which(path)
    if not found:
        pytest.fail(
            f"no node at {path!r}: install Debian's nodejs with "
            "`apt-get update && apt-get install -y nodejs` (make test does), or point LTT_NODE at one",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, shared by one test module's pages."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser):
    """``new_page(width=1360, height=860, timeout=30_000, strict=True, **options)``: a page of the
    module's browser (``options`` as ``browser.new_page`` takes them, e.g. ``color_scheme``) that
    records its uncaught errors in ``page.errors`` and its dialogs, dismissed, in
    ``page.dialogs``. Every page is closed after the test, which then fails if a ``strict`` page
    had an uncaught error."""
    pages = []

    def make(width: int = 1360, height: int = 860, timeout: float = 30_000, strict: bool = True, **options):
        pg = browser.new_page(viewport={"width": width, "height": height}, **options)
        pg.errors, pg.dialogs = [], []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
        pg.set_default_timeout(timeout)
        pages.append((pg, strict))
        return pg

    try:
        yield make
    finally:
        for pg, _ in pages:
            pg.close()
    errors = [e for pg, strict in pages if strict for e in pg.errors]
    assert not errors, errors


@pytest.fixture
def page(new_page):
    """A 1360 x 860 page with a 20 s default timeout (see ``new_page``)."""
    return new_page(timeout=20_000)


def drawn(page) -> tuple[set, dict]:
    """What a page's graph view draws: its node names and ``{edge key: weight}``."""
    nodes = page.eval_on_selector_all("[data-node]", "els => els.map(e => e.dataset.node)")
    edges = page.eval_on_selector_all(
        "[data-edge]", "els => els.map(e => [e.dataset.edge, Number(e.dataset.weight)])")
    return set(nodes), dict(edges)


def assert_draws(page, g) -> None:
    """The page draws exactly the nodes and edges of the Graph ``g``, weights to 2e-6."""
    nodes, edges = drawn(page)
    want_nodes = {n.name for n in g.nodes}
    want_edges = {f"{e.source}|{e.target}|{e.kind}": e.weight for e in g.edges}
    assert nodes == want_nodes, (sorted(nodes - want_nodes), sorted(want_nodes - nodes))
    assert set(edges) == set(want_edges), (sorted(set(edges) - set(want_edges)), sorted(set(want_edges) - set(edges)))
    for k, w in want_edges.items():
        assert edges[k] == pytest.approx(w, abs=2e-6), k


def visible_token(tok: str) -> str:
    """The page's visibleToken(): newlines and tabs shown, an all-blank token as ␣."""
    t = tok.replace("\r", "\u240d").replace("\n", "\u21b5").replace("\t", "\u21e5")
    return t.replace(" ", "\u2423") if t and not t.strip() else t


@pytest.fixture(scope="session")
def traced(tiny_model):
    """``traced(key)`` -> ``(model, model.trace(PROMPT))`` of a family's tiny model, cached for
    the session (tests read these traces; one that changes a model loads its own)."""
    cache: dict = {}

    def get(key: str):
        if key not in cache:
            model = tiny_model(key)
            cache[key] = (model, model.trace(PROMPT))
        return cache[key]

    return get


class ServeSession:
    """An ``ltt serve`` page's session driven without a browser: ``ask(msg)`` sends one message
    and waits for its job to end (returning the job), ``got`` lists every message sent back."""

    def __init__(self, state):
        import threading

        from ltt.serve import session as sess

        self.state, self.got, self._done = state, [], threading.Event()
        self._want, self._seen, self._ended = None, set(), None
        self.session = sess.Session(state, self._send)

    def _send(self, msg: dict) -> None:
        # the job a message asks for is the first job id seen after it (a page may queue more
        # jobs of its own afterwards, e.g. the graph's faithfulness check)
        self.got.append(msg)
        if msg["method"] != "job":
            return
        job = msg["job"]
        if self._want is None and job["id"] not in self._seen:
            self._want = job["id"]
        self._seen.add(job["id"])
        if job["id"] == self._want and job["state"] in ("done", "failed"):
            self._ended = job
            self._done.set()

    def send(self, msg: dict) -> None:
        import json

        self.session.handle(json.dumps(msg))

    def ask(self, msg: dict) -> dict:
        self._done.clear()
        self._want = None
        self.send(msg)
        assert self._done.wait(60)
        return self._ended

    def close(self) -> None:
        self.session.close()
        self.state.worker.stop(timeout=10)
