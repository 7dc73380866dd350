"""Typed `--set` values, typed checks in resolve_configs, and the source hash that tags kept results."""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tapper.prefix.config import TapperConfig
from tapper.settings import (
    SettingError,
    check_settings,
    field_types,
    parse_overrides,
    parse_setting,
    source_hash,
    split_overrides,
)
from tapper.train import TrainConfig, resolve_configs

ROOT = Path(__file__).resolve().parents[1]
CLASSES = (TapperConfig, TrainConfig)


@pytest.mark.parametrize("raw", ["true", "True", "YES", "yes", "on", "1", " On "])
def test_bool_true_words(raw):
    assert parse_setting(TapperConfig, "use_bridge", raw) is True


@pytest.mark.parametrize("raw", ["false", "FALSE", "no", "No", "off", "0"])
def test_bool_false_words_are_false_not_truthy_strings(raw):
    # The old parser kept "no" as the string "no", which is truthy: the ablation silently ran the full model.
    assert parse_setting(TapperConfig, "use_bridge", raw) is False


@pytest.mark.parametrize(
    ("key", "raw", "accepts"),
    [
        ("use_bridge", "maybe", "a boolean (true/false, yes/no, on/off, 1/0)"),
        ("use_bridge", "", "a boolean"),
        ("prefix_len", "abc", "an integer"),
        ("prefix_len", "8.5", "an integer"),
        ("bridge_dropout", "lots", "a finite number"),
        ("bridge_dropout", "nan", "a finite number"),
        ("lora_targets", "q_proj,,v_proj", "a list of strings (a JSON list or comma-separated) or none/null"),
        ("lora_targets", "[1, 2]", "a list of strings"),
        ("lora_targets", '["q_proj"', "a list of strings"),  # a JSON list cut short
    ],
)
def test_bad_values_name_the_key_the_value_and_what_it_takes(key, raw, accepts):
    with pytest.raises(SettingError) as err:
        parse_setting(TapperConfig, key, raw)
    message = str(err.value)
    assert message.startswith(f"{key}={raw!r}: TapperConfig.{key} takes ")
    assert accepts in message


def test_numbers_none_lists_and_text():
    assert parse_setting(TapperConfig, "prefix_len", " 12 ") == 12
    assert parse_setting(TrainConfig, "stage2_epochs", "2") == 2.0
    assert isinstance(parse_setting(TrainConfig, "stage2_epochs", "2"), float)
    assert parse_setting(TrainConfig, "stage2_lr", "1e-3") == pytest.approx(1e-3)
    assert parse_setting(TrainConfig, "max_history_pairs", "8") == 8
    for word in ("none", "None", "null", "NULL"):
        assert parse_setting(TrainConfig, "max_history_pairs", word) is None
        assert parse_setting(TapperConfig, "lora_targets", word) is None
    with pytest.raises(SettingError, match="an integer or none/null"):
        parse_setting(TrainConfig, "max_history_pairs", "eight")
    assert parse_setting(TapperConfig, "lora_targets", "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert parse_setting(TapperConfig, "lora_targets", '["q_proj", "o_proj"]') == ["q_proj", "o_proj"]
    assert parse_setting(TapperConfig, "retriever", "bm25") == "bm25"
    assert parse_setting(TapperConfig, "anchor_text", "a user writes:") == "a user writes:"
    assert parse_setting(TapperConfig, "anchor_text", "null") is None


def test_types_are_read_from_the_dataclass_when_called():
    # A config grown by another module later is parsed by its new fields' own types, with no list to update.
    @dataclass
    class Grown:
        steps: int = 1
        ratio: float | None = None
        names: tuple[str, ...] = ("a",)
        flags: list[bool] = field(default_factory=list)

    assert field_types(Grown)["ratio"] == float | None
    assert parse_setting(Grown, "steps", "3") == 3
    assert parse_setting(Grown, "ratio", "0.5") == 0.5
    assert parse_setting(Grown, "names", "x,y") == ("x", "y")
    assert parse_setting(Grown, "flags", "yes,off") == [True, False]
    with pytest.raises(SettingError, match="unknown Grown option 'nope'"):
        parse_setting(Grown, "nope", "1")


def test_parse_and_split_overrides_across_both_configs():
    over = parse_overrides(["use_bridge=no", "stage2_epochs=0.5", "prefix_len=4", "prefix_len=6"], CLASSES)
    assert over == {"use_bridge": False, "stage2_epochs": 0.5, "prefix_len": 6}  # the later item wins
    model, train = split_overrides(over, CLASSES)
    assert model == {"use_bridge": False, "prefix_len": 6}
    assert train == {"stage2_epochs": 0.5}
    with pytest.raises(SettingError, match="key=value"):
        parse_overrides(["use_bridge"], CLASSES)
    with pytest.raises(SettingError, match="'no_such_option'"):
        parse_overrides(["no_such_option=1"], CLASSES)
    with pytest.raises(SettingError, match="prefix_len='abc'"):
        parse_overrides(["prefix_len=abc"], CLASSES)
    with pytest.raises(SettingError, match="no_such_option"):
        split_overrides({"no_such_option": 1}, CLASSES)


def test_resolve_configs_rejects_wrongly_typed_values_with_the_same_message():
    with pytest.raises(ValueError, match=r"^use_bridge='no': TapperConfig.use_bridge takes a boolean"):
        resolve_configs("LaMP_7", {"use_bridge": "no"})
    with pytest.raises(ValueError, match=r"^prefix_len='8': TapperConfig.prefix_len takes an integer"):
        resolve_configs("LaMP_7", {"prefix_len": "8"})
    with pytest.raises(ValueError, match=r"^max_history_pairs=2.5: TrainConfig.max_history_pairs takes an integer"):
        resolve_configs("LaMP_7", {}, {"max_history_pairs": 2.5})
    with pytest.raises(ValueError, match="unknown TrainConfig option"):
        resolve_configs("LaMP_7", {}, {"no_such_option": 1})
    # right types pass, an int is taken where a float is declared, None where the field is optional
    tcfg, cfg = resolve_configs("LaMP_7", {"use_bridge": False, "lora_targets": ["q_proj"]},
                                {"stage2_epochs": 1, "max_history_pairs": None})
    assert tcfg.use_bridge is False and cfg.stage2_epochs == 1 and cfg.max_history_pairs is None


def test_check_settings_accepts_every_task_default_and_rejects_bools_as_numbers():
    check_settings(TrainConfig, {"seed": 3, "user_lr": 0.01, "stage1_max_examples": None})
    with pytest.raises(SettingError, match=r"seed=True: TrainConfig.seed takes an integer"):
        check_settings(TrainConfig, {"seed": True})
    with pytest.raises(SettingError, match="user_lr=inf"):
        check_settings(TrainConfig, {"user_lr": float("inf")})


# -- source hash -------------------------------------------------------------------------------------------

def _copy_package(tmp_path: Path) -> Path:
    package = tmp_path / "tapper"
    shutil.copytree(ROOT / "tapper", package, ignore=shutil.ignore_patterns("__pycache__"))
    return package


def test_source_hash_changes_with_any_py_or_json_file(tmp_path):
    package = _copy_package(tmp_path)
    before = source_hash(package)
    assert before == source_hash(package)  # deterministic
    assert before == source_hash(shutil.copytree(package, tmp_path / "elsewhere" / "tapper"))  # path-free

    metrics = package / "metrics.py"
    original = metrics.read_bytes()
    metrics.write_bytes(original + b"\n# a comment is a change too\n")
    changed = source_hash(package)
    assert changed != before
    metrics.write_bytes(original)
    assert source_hash(package) == before

    config = package / "configs" / "LaMP_7.json"
    config.write_text(config.read_text() + " ")
    assert source_hash(package) != before
    config.write_text(config.read_text()[:-1])

    (package / "new_module.py").write_text("")
    assert source_hash(package) != before  # an added file, even empty
    (package / "new_module.py").rename(package / "renamed.py")
    assert source_hash(package) not in (before, changed)


def test_source_hash_ignores_caches_and_other_files(tmp_path):
    package = _copy_package(tmp_path)
    before = source_hash(package)
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "metrics.cpython-311.pyc").write_bytes(b"\0compiled")
    (package / "notes.txt").write_text("not source")
    assert source_hash(package) == before


def test_source_hash_leaves_out_the_service_and_the_command_line(tmp_path):
    """Kept quality results survive work on the parts that cannot change them."""
    package = _copy_package(tmp_path)
    before = source_hash(package)
    for part in ("serve/app.py", "store/user_store.py", "cli/model.py"):
        (package / part).write_text((package / part).read_text() + "\n# edited\n")
    assert source_hash(package) == before
    (package / "prefix" / "model.py").write_text((package / "prefix" / "model.py").read_text() + "\n# edited\n")
    assert source_hash(package) != before


def test_source_hash_default_is_the_installed_package():
    import tapper
    from tapper.settings import PACKAGE_ROOT

    assert PACKAGE_ROOT == Path(tapper.__file__).resolve().parent
    assert len(source_hash()) == 16 and int(source_hash(), 16) >= 0


def test_quality_kept_results_are_tagged_with_the_source(monkeypatch):
    import tapper.compare.runner as quality  # bench/quality.py's kept results are tapper.compare's

    settings = {"prefix_len": 8, "user_lr": 0.003, "onboard_steps": 30}
    monkeypatch.setattr(quality, "source_hash", lambda: "code-a")
    tags_a = (quality.fingerprint(settings), quality.method_fingerprint("tapper", settings),
              quality.method_fingerprint("rag", settings))
    monkeypatch.setattr(quality, "source_hash", lambda: "code-b")
    tags_b = (quality.fingerprint(settings), quality.method_fingerprint("tapper", settings),
              quality.method_fingerprint("rag", settings))
    assert all(a != b for a, b in zip(tags_a, tags_b, strict=True))
    assert quality.fingerprint(settings) == tags_b[0]  # same code, same settings: the same tag
