import pytest

from afqmc.config import ConfigError, TrainConfig, from_dict, load_config, parse_overrides


def test_defaults_are_the_macbert_baseline_shape():
    cfg = TrainConfig()
    assert cfg.model_name_or_path == "hfl/chinese-macbert-base"
    assert cfg.max_length == 64 and cfg.threshold == "tuned" and cfg.trust_remote_code is False
    assert cfg.test_ratio == 0 and cfg.metric_for_best_model == "val/f1_macro"


@pytest.mark.parametrize("given, expected", [("0.5", 0.5), ("tuned", "tuned"), ("0.35", 0.35)])
def test_threshold_takes_a_number_or_tuned_from_yaml_and_the_command_line(tmp_path, given, expected):
    path = tmp_path / "c.yaml"
    path.write_text(f"# test\nthreshold: {given}\n")
    assert load_config(path).threshold == expected
    assert load_config(None, parse_overrides(["--threshold", given])).threshold == expected


@pytest.mark.parametrize("line, field, phrase", [
    ("threshold: tune", "threshold", "or 'tuned'"),
    ("threshold: 1.5", "threshold", "(0, 1)"),
    ("test_ratio: 1.0", "test_ratio", "[0, 1)"),
    ("test_ratio: 0.95", "test_ratio", "leave pairs to train on"),
    ("metric_for_best_model: f1", "metric_for_best_model", "val/auc"),
    ("report_to: neptune", "report_to", "tensorboard"),
    ("report_to: [none, mlflow]", "report_to", "without none"),
])
def test_bad_threshold_test_ratio_or_metric_names_file_line_and_field(tmp_path, line, field, phrase):
    path = tmp_path / "c.yaml"
    path.write_text(f"# test\nlearning_rate: 1.0e-4\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:3" in str(info.value) and field in str(info.value) and phrase in str(info.value)


def test_metric_for_best_model_takes_short_names():
    assert load_config(None, {"metric_for_best_model": "auc"}).metric_for_best_model == "val/auc"
    assert load_config(None, {"metric_for_best_model": "eval_f1_macro"}).metric_for_best_model == "val/f1_macro"


def test_yaml_then_cli_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# test\nlearning_rate: 2e-5\nper_device_batch_size: 16\nclass_weights: [0.72, 1.62]\n")
    cfg = load_config(path, parse_overrides(["--per_device_batch_size", "8", "--learning_rate=3e-5"]))
    assert cfg.learning_rate == pytest.approx(3e-5)  # "3e-5" is a string to YAML 1.1; we parse it
    assert cfg.per_device_batch_size == 8
    assert cfg.class_weights == [0.72, 1.62]
    assert load_config(path).learning_rate == pytest.approx(2e-5)
    assert TrainConfig().group_by_length is False
    assert load_config(path, parse_overrides(["--group_by_length", "true"])).group_by_length is True


def test_class_weight_shorthand_and_balanced():
    assert from_dict({"class_weights": 2.25}).class_weights == [1.0, 2.25]
    assert from_dict({"class_weights": "balanced"}).class_weights == "balanced"
    assert load_config(None, parse_overrides(["--class_weights", "null"])).class_weights is None


@pytest.mark.parametrize("values, field", [
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": -1e-5}, "learning_rate"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": 1.0}, "threshold"),
    ({"class_weights": [1.0, 0.0]}, "class_weights"),
    ({"class_weights": [1.0, 2.0, 3.0]}, "class_weights"),
    ({"class_weights": "inverse"}, "class_weights"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"per_device_batch_size": -4}, "per_device_batch_size"),
    ({"per_device_batch_size": 0}, "per_device_batch_size"),
    ({"max_length": 0}, "max_length"),
    ({"dropout": 1.0}, "dropout"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"max_steps": 1.5}, "max_steps"),
    ({"per_device_batch_size": "many"}, "per_device_batch_size"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"lerning_rate": 1e-3}, "lerning_rate"),
    ({"group_by_length": "sometimes"}, "group_by_length"),
    ({"group_by_length": 1}, "group_by_length"),
])
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(ConfigError) as err:
        from_dict(values)
    assert f"'{field}'" in str(err.value)
    assert err.value.field == field


def test_yaml_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("# header\nlearning_rate: 1e-3\nlerning_rate: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: unknown field 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        load_config(path)
    path.write_text("learning_rate: 1e-3\n\nthreshold: 1.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: field 'threshold' must be in \(0, 1\)"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_errors():
    with pytest.raises(ConfigError, match="command line: unknown field 'nope'"):
        parse_overrides(["--nope", "1"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--learning_rate"])


def test_resolved_config_round_trips(tmp_path):
    cfg = from_dict({"class_weights": [0.72, 1.62], "learning_rate": 3e-5, "val_file": None})
    cfg.save_yaml(tmp_path / "r.yaml", header="resolved")
    assert load_config(tmp_path / "r.yaml") == cfg


def test_help_lists_every_field_with_type_default_and_description():
    from afqmc.config import FIELDS, field_docs, fields_help

    docs = field_docs()
    assert set(docs) == set(FIELDS) and all(docs.values())  # every field described
    text = fields_help()
    for name, f in FIELDS.items():
        assert f"  --{name} " in text and f"(default {f.default!r})" in text
    assert "  --threshold float | str (default 'tuned')" in text and "cross-fitted" in text
    assert "  --label_smoothing float (default 0.0)" in text and "Label smoothing:" in text


def test_every_field_carries_its_help_in_its_metadata_and_help_needs_no_source(monkeypatch, capsys):
    """HfArgumentParser's convention: field(metadata={"help": ...}); --help reads it, not the source
    file (which an install without .py files, or a frozen app, does not ship)."""
    import dataclasses
    import inspect

    from afqmc.config import TrainConfig
    from afqmc.train import main

    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("help"), str) and len(f.metadata["help"]) >= 10, f.name

    def no_source(*args, **kwargs):
        raise OSError("could not get source code")

    monkeypatch.setattr(inspect, "getsource", no_source)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"  --{f.name} " in text
        assert " ".join(f.metadata["help"].split()[:4]) in " ".join(text.split()), f.name
