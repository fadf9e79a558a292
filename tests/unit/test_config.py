import pytest

from pipeline.config import (ConfigError, RunJobConfig, TrainJobConfig, describe_keys, flat_config, load_config,
                             parse_override, valid_keys)

BASE = ["data.train=a", "data.val=b"]


def test_contract_keys_exist():
    keys = set(valid_keys(RunJobConfig))
    for k in ["data.train", "data.val", "model.embed_dim", "model.image.arch", "model.text.arch", "loss.name",
              "loss.temperature", "loss.learn_temperature", "loss.margin", "train.batch_size", "train.epochs",
              "train.lr", "scaling.num_workers", "scaling.use_gpu", "run.name", "run.storage_path"]:
        assert k in keys


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {train: x, val: y}\ntrain: {epochs: 3, lr: 0.01}\nmodel: {image: {arch: resnet18}}\n")
    cfg = load_config(TrainJobConfig, p, ["train.epochs=7", "loss.temperature=0.05", "scaling.use_gpu=false"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01
    assert cfg.loss.temperature == 0.05 and cfg.model.image.arch == "resnet18"
    assert cfg.scaling.use_gpu is False


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, BASE + ["train.epoch=3"])
    assert "train.epoch" in str(e.value) and "train.epochs" in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {train: x, val: y, bogus: 1}\n")
    with pytest.raises(ConfigError, match=r"data.bogus.*; data has .*train, val.*`pipeline keys`"):
        load_config(TrainJobConfig, p)


def test_batch_not_divisible_names_fix():
    with pytest.raises(ConfigError, match="not divisible by scaling.num_workers=3"):
        load_config(TrainJobConfig, None, BASE + ["train.batch_size=256", "scaling.num_workers=3"])


@pytest.mark.parametrize("override,match", [
    ("train.epochs=abc", "not an integer"), ("train.epochs=1.5", "not an integer"),
    ("loss.temperature=100", "temperature"), ("loss.name=nope", "choose one of"),
    ("model.text.arch=lstmx", "choose one of"), ("scaling.use_gpu=maybe", "boolean"),
])
def test_bad_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainJobConfig, None, BASE + [override])


def test_missing_data_path_is_an_error():
    with pytest.raises(ConfigError, match="data.train is empty"):
        load_config(TrainJobConfig, None, [])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainJobConfig, "/no/such.yaml")


def test_parse_override_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=[1, 5]") == ("a.b", [1, 5])
    assert parse_override("a.b=s3://x/y") == ("a.b", "s3://x/y")
    with pytest.raises(ConfigError):
        parse_override("nokey")


def test_roundtrip_and_local_batch():
    cfg = load_config(RunJobConfig, None, BASE + ["train.batch_size=64", "scaling.num_workers=4"])
    assert cfg.local_batch_size() == 16
    flat = flat_config(cfg)
    assert flat["train.batch_size"] == 64 and set(flat) == set(valid_keys(RunJobConfig))


def test_every_key_documented():
    assert all(help_text for _, help_text, _ in describe_keys(RunJobConfig))


def test_configuration_page_documents_every_key():
    """docs/configuration.md's table is `pipeline keys` as Markdown: every key in it, and no key that is gone."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    keys = [k for k, _, _ in describe_keys(RunJobConfig)]
    missing = [k for k in keys if f"`{k}`" not in page]
    assert not missing, f"docs/configuration.md's key table lacks {missing}; regenerate it from `pipeline keys`"
    rows = re.findall(r"^\| `([^`]+)` \|", page, flags=re.M)
    stale = sorted(set(rows) - set(keys))
    assert not stale, f"docs/configuration.md's key table names keys that no longer exist: {stale}; " \
                      "regenerate it from `pipeline keys`"


def test_docs_links_resolve():
    """Every relative Markdown link in README.md and docs/*.md points at a file that exists."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    broken = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"(https?://|mailto:)", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(root)}: ]({target})")
    assert not broken, "broken relative links: " + "; ".join(broken)
