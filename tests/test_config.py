from pathlib import Path

import pytest

from pipeline.config import ConfigError, TrainConfig, deep_merge
from pipeline.flows.configs import load_cmc_config, load_pipeline_config, load_train_config, pipeline_from_dict

BASE = {"old": {"name": "old", "classes": "first_half"}, "new": [{"name": "lce", "method": "lce_direct"}]}


def test_demo_config_loads_with_defaults_merged():
    cfg = load_pipeline_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert [m.name for m in cfg.new] == ["independent", "bct", "lce"]
    assert cfg.new[2].model.head.kind == "cosface"  # from the shared `train` block
    assert cfg.old.classes == "first_half"


def test_train_defaults_reach_every_model():
    cfg = pipeline_from_dict({**BASE, "train": {"epochs": 7, "model": {"embedding_dim": 64}}})
    assert cfg.old.epochs == cfg.new[0].epochs == 7
    assert cfg.new[0].model.embedding_dim == 64


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'new.0.compat.lambda_algin'"):
        pipeline_from_dict({**BASE, "new": [{"name": "lce", "compat": {"lambda_algin": 1}}]}, "x.yaml")


def test_wrong_type_is_named_with_the_file():
    with pytest.raises(ConfigError, match=r"x.yaml: key 'old.epochs'.*'many'"):
        pipeline_from_dict({**BASE, "old": {"name": "old", "epochs": "many"}}, "x.yaml")


def test_out_of_range_margin_is_named():
    with pytest.raises(ConfigError, match=r"compactness_margin"):
        pipeline_from_dict({**BASE, "new": [{"name": "lce", "compat": {"compactness_margin": -0.1}}]})


def test_bad_method_and_duplicate_names_are_refused():
    with pytest.raises(ConfigError, match="method"):
        pipeline_from_dict({**BASE, "new": [{"name": "x", "method": "magic"}]})
    with pytest.raises(ConfigError, match="repeated"):
        pipeline_from_dict({**BASE, "new": [{"name": "old"}]})


def test_model_names_cannot_be_paths():
    with pytest.raises(ConfigError, match="name"):
        pipeline_from_dict({**BASE, "new": [{"name": "../evil"}]})


def test_train_config_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: m\nmethod: bct\nepochs: 2\n")
    assert load_train_config(path).method == "bct"
    path.write_text("name: m\nepochs: [1]\n")
    with pytest.raises(ConfigError, match=f"{path}: key 'epochs'"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_model_configs_in_the_repo_load():
    for path in (Path(__file__).parents[1] / "configs" / "models").glob("*.yaml"):
        assert load_train_config(path).name == path.stem
    for path in (Path(__file__).parents[1] / "configs" / "cmc").glob("*.yaml"):
        assert load_cmc_config(path).method == f"{path.stem}_cmc"


def test_seeds_repeat_every_new_model_and_cmc_fit_but_not_the_old_model():
    cfg = pipeline_from_dict({**BASE, "seeds": [0, 3], "new": [{"name": "ind"}, {"name": "lce", "method": "lce_direct"}],
                              "cmc": [{"name": "cmc", "new_model": "ind"}]})
    assert cfg.old.name == "old" and cfg.old.seed == 0
    assert [(m.name, m.seed) for m in cfg.new] == [("ind-s0", 0), ("lce-s0", 0), ("ind-s3", 3), ("lce-s3", 3)]
    assert [(c.name, c.new_model, c.seed) for c in cfg.cmc] == [("cmc-s0", "ind-s0", 0), ("cmc-s3", "ind-s3", 3)]


def test_bad_seeds_and_unknown_cmc_models_are_named():
    with pytest.raises(ConfigError, match="key 'seeds': expected a non-empty list of integers"):
        pipeline_from_dict({**BASE, "seeds": "0"}, "x.yaml")
    with pytest.raises(ConfigError, match="new_model 'nope' is not one of the new models"):
        pipeline_from_dict({**BASE, "cmc": [{"name": "cmc", "new_model": "nope"}]}, "x.yaml")


def test_every_scenario_config_loads():
    folder = Path(__file__).parents[1] / "configs" / "scenarios"
    scenarios = {path.stem: load_pipeline_config(path) for path in folder.glob("*.yaml")}
    assert set(scenarios) == {"data", "classes", "loss", "backbone", "dim"}
    for name, cfg in scenarios.items():
        assert {m.seed for m in cfg.new} == {0, 1, 2} and cfg.score.pairs == "counterparts", name
        assert {c.method for c in cfg.cmc} == {"rbt_cmc", "lce_rbt_cmc", "retrieval_cmc"}, name
    assert scenarios["dim"].old.model.embedding_dim == 64 and {m.model.embedding_dim for m in scenarios["dim"].new} == {128}
    assert not {"bct", "l2", "lce_direct"} & {m.method for m in scenarios["dim"].new}
    assert scenarios["backbone"].old.model.architecture == "mlp"
    assert {m.model.architecture for m in scenarios["backbone"].new} == {"small_cnn"}
    assert scenarios["loss"].old.model.head.kind == "softmax"
    assert {m.model.head.kind for m in scenarios["loss"].new} == {"arcface"}
    assert scenarios["classes"].old.classes == "first_half"
    assert scenarios["data"].old.data_fraction == scenarios["data"].new[0].data_fraction / 16
    assert [name for name, cfg in scenarios.items() if "l2" in {m.method for m in cfg.new}] == ["data"]


def test_the_gpu_backbone_scenario_is_the_papers_pair():
    cfg = load_pipeline_config(Path(__file__).parents[1] / "configs" / "scenarios" / "gpu" / "backbone.yaml")
    assert cfg.old.model.architecture == "resnet18" and {m.model.architecture for m in cfg.new} == {"resnet50"}
    assert all(m.use_gpu for m in [cfg.old, *cfg.new]) and {m.seed for m in cfg.new} == {0}
    assert cfg.concurrent_fits == 1 and {m.method for m in cfg.new} >= {"independent", "lce_forward"}


def test_a_file_extends_the_file_its_base_names(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(
        "train: {epochs: 2, model: {embedding_dim: 32}}\nold: {name: old, epochs: 1}\nnew: [{name: a}, {name: b}]\n")
    (tmp_path / "child.yaml").write_text("base: shared/base.yaml\nold: {classes: first_half}\nnew: [{name: c}]\n")
    cfg = load_pipeline_config(tmp_path / "child.yaml")
    assert (cfg.old.epochs, cfg.old.classes, cfg.old.model.embedding_dim) == (1, "first_half", 32)  # merged key by key
    assert [m.name for m in cfg.new] == ["c"] and cfg.new[0].epochs == 2  # lists replaced whole


def test_a_base_that_is_missing_or_extends_itself_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"key 'base': the files extend each other in a cycle"):
        load_pipeline_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml: config file not found"):
        load_pipeline_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"d.yaml: key 'base': expected the path of the file it extends"):
        load_pipeline_config(tmp_path / "d.yaml")


def test_scenario_files_state_only_what_differs_from_their_base():
    folder = Path(__file__).parents[1] / "configs" / "scenarios"
    extending = sorted(path.stem for path in folder.glob("*.yaml") if "base: shared/base.yaml" in path.read_text())
    assert extending == ["backbone", "classes", "data", "dim", "loss"]
    assert all(len(path.read_text().splitlines()) <= 12 for path in folder.glob("*.yaml") if path.stem in extending)


def test_the_real_size_configs_give_one_team_model_three_ways():
    root = Path(__file__).parents[1] / "configs"
    configs = {path.stem: load_pipeline_config(path)
               for path in [root / "realsize.yaml", *sorted((root / "realsize").glob("*.yaml"))]}
    assert {name: cfg.old.source.kind for name, cfg in configs.items()} == {
        "realsize": "torchscript", "onnx": "onnx", "embeddings": "embeddings"}
    assert len({cfg.output_dir for cfg in configs.values()}) == 3
    assert all(cfg.new == configs["realsize"].new for cfg in configs.values())  # only the old model's form differs


def test_a_source_of_another_kind_replaces_its_base_other_mappings_merge():
    base = {"old": {"name": "old", "source": {"kind": "onnx", "file": "m.onnx", "preprocessing": {"mode": "L"}}},
            "train": {"model": {"head": {"kind": "cosface", "scale": 16, "margin": 0.1}}}}
    merged = deep_merge(base, {"old": {"source": {"kind": "embeddings", "train": "a", "test": "b"}}})
    assert merged["old"] == {"name": "old", "source": {"kind": "embeddings", "train": "a", "test": "b"}}
    assert deep_merge(base, {"old": {"source": {"file": "n.onnx"}}})["old"]["source"]["preprocessing"] == {"mode": "L"}
    head = deep_merge(base, {"train": {"model": {"head": {"kind": "arcface"}}}})["train"]["model"]["head"]
    assert head == {"kind": "arcface", "scale": 16, "margin": 0.1}  # a head's kind keeps its scale and margin


def test_streaming_settings_are_refused_on_the_held_path_and_every_config_survives_its_own_dump():
    for key, value in (("augment", {}), ("decode_cpus", 0)):
        with pytest.raises(ValueError, match=f"{key}: only the streamed ingest uses it"):
            TrainConfig(name="a", method="independent", **{key: value})
    held = TrainConfig(name="a", method="independent")
    streamed = TrainConfig(name="a", method="independent", ingest="stream", augment={}, decode_cpus=0)
    for cfg in (held, streamed):  # cards, sweeps and confirmations validate a dump again
        assert TrainConfig.model_validate(cfg.model_dump()) == cfg
    assert (held.reserved_cpus, streamed.reserved_cpus) == (held.cpus_per_worker, streamed.cpus_per_worker)
    assert TrainConfig(name="a", method="independent", ingest="stream").decoding_cpus == 1
