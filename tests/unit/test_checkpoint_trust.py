"""Every file a checkpoint's manifest lists is verified on load, a checkpoint that cannot load is refused in
one line on the driver, a resume may not silently change the model, and Ray's own checkpoint list cannot
block a resume."""
import json
import pickle

import pytest
import torch

import pipeline
from pipeline import checkpoint
from pipeline.config import TrainJobConfig, load_config, to_dict
from pipeline.data.text.tokenizer import Tokenizer
from pipeline.models import build_model

BASE = ["data.train=a", "data.val=b", "model.embed_dim=8", "model.image.width=4", "model.text.word_dim=8",
        "model.text.hidden=8", "data.image_size=32"]


def _checkpoint(path, *extra):
    cfg = load_config(TrainJobConfig, None, BASE + list(extra))
    tok = Tokenizer(["[PAD]", "[UNK]", "red", "square", "blue", "circle"], 8)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(tok), image_size=32, max_tokens=8)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.write_checkpoint(path, model=model, loss=torch.nn.Linear(1, 1), optimizer=opt, scheduler=sched,
                                tokenizer=tok, config=to_dict(cfg), state={"epoch": 1})
    return path


def test_a_reordered_tokenizer_of_the_same_size_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "c")
    before = pipeline.load(ckpt).encode_text(["red square"])
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = tok["vocab"]
    vocab[2], vocab[4] = vocab[4], vocab[2]  # red <-> blue: same bytes, same size, other embeddings
    text = json.dumps(tok)
    assert len(text) == (ckpt / "tokenizer.json").stat().st_size
    (ckpt / "tokenizer.json").write_text(text)
    assert checkpoint.is_checkpoint(ckpt)  # sizes alone do not notice
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer.json does not match the hash"):
        pipeline.load(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer.json does not match the hash") as e:
        checkpoint.check_loadable(ckpt)
    assert "to resume from the one before" not in str(e.value)  # a lone checkpoint has no one before it
    assert "restore the file or use another checkpoint" in str(e.value)
    assert before.shape == (1, 8)


def test_a_damaged_newest_checkpoint_is_passed_over_and_named_with_what_is_wrong(tmp_path):
    run = tmp_path / "run" / "checkpoints"
    older = _checkpoint(run / "epoch_0001")
    newest = _checkpoint(run / "epoch_0002")
    (newest / "model.pt").write_bytes(b"\0" * (newest / "model.pt").stat().st_size)  # same size, other bytes
    passed: list = []
    assert checkpoint.find_latest(tmp_path / "run", verify=True, passed_over=passed) == str(older)
    assert passed == [(str(newest), "model.pt not matching the hash state.json records")]
    (older / "tokenizer.json").unlink()
    passed = []
    assert checkpoint.find_latest(tmp_path / "run", verify=True, passed_over=passed) is None
    assert [p for _, p in passed] == ["model.pt not matching the hash state.json records", "tokenizer.json missing"]


def test_an_edited_config_is_refused_not_a_state_dict_traceback(tmp_path):
    ckpt = _checkpoint(tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["embed_dim"] = 16
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=2))
    with pytest.raises(checkpoint.CheckpointError, match="config.json does not match the hash"):
        checkpoint.check_loadable(ckpt)


def _rewrite_manifest(ckpt) -> None:
    """What a tool that re-hashes the files would leave: a manifest that agrees with changed files."""
    state = json.loads((ckpt / "state.json").read_text())
    for name in state["sha256"]:
        state["sha256"][name] = checkpoint._sha256(ckpt / name)
        state["files"][name] = (ckpt / name).stat().st_size
    (ckpt / "state.json").write_text(json.dumps(state))


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_payload_is_refused_in_one_line(tmp_path):
    ckpt = _checkpoint(tmp_path / "c")
    (ckpt / "model.pt").write_bytes(pickle.dumps({"w": Payload()}, protocol=2))
    _rewrite_manifest(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match="model.pt holds pickled objects") as e:
        checkpoint.check_loadable(ckpt)
    assert "\n" not in str(e.value)


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path):
    ckpt = _checkpoint(tmp_path / "c")
    other = _checkpoint(tmp_path / "d", "model.embed_dim=16")
    (ckpt / "model.pt").write_bytes((other / "model.pt").read_bytes())
    _rewrite_manifest(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match="weights do not fit the model its config.json") as e:
        checkpoint.check_loadable(ckpt)
    assert "\n" not in str(e.value)


def test_config_changes_lists_shaping_keys_only():
    old = {"data": {"image_size": 64, "train": "a", "shuffle_block": 8}, "model": {"embed_dim": 8},
           "train": {"epochs": 3, "batch_size": 16}, "run": {"name": "x"}}
    new = {"data": {"image_size": 96, "train": "b", "shuffle_block": 4}, "model": {"embed_dim": 8},
           "train": {"epochs": 6, "batch_size": 32}, "run": {"name": "x"}}
    assert checkpoint.config_changes(old, new) == ["data.image_size: 64 -> 96", "train.batch_size: 16 -> 32"]
    # How a step runs (memory options, the sharding) is not the model it trains: a resume may change it.
    old["model"] |= {"image": {"grad_checkpointing": False, "patch_dropout": 0.0, "arch": "vit_b_16"},
                     "text": {"grad_checkpointing": False}}
    new["model"] |= {"image": {"grad_checkpointing": True, "patch_dropout": 0.5, "arch": "vit_b_16"},
                     "text": {"grad_checkpointing": True}}
    old["scaling"], new["scaling"] = {"strategy": "ddp"}, {"strategy": "fsdp"}
    assert checkpoint.config_changes(old, new) == ["data.image_size: 64 -> 96", "train.batch_size: 16 -> 32"]
    new["model"]["image"]["arch"] = "resnet18"
    assert "model.image.arch: \"vit_b_16\" -> \"resnet18\"" in checkpoint.config_changes(old, new)


def test_a_resume_with_a_changed_model_stops_unless_allowed(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.training.attempts import check_resume_config

    ckpt = _checkpoint(tmp_path / "c")
    same = load_config(TrainJobConfig, None, BASE)
    assert check_resume_config(same, str(ckpt)) == []
    changed = load_config(TrainJobConfig, None, BASE + ["data.image_size=48", "model.text.arch=lstm"])
    with pytest.raises(ConfigError, match=r"config differs: data.image_size: 32 -> 48; model.text.arch: \"gru\" "
                                          r"-> \"lstm\". Use a new run.name.*run.allow_config_change=true"):
        check_resume_config(changed, str(ckpt))
    allowed = load_config(TrainJobConfig, None, BASE + ["data.image_size=48", "run.allow_config_change=true"])
    assert check_resume_config(allowed, str(ckpt)) == ["data.image_size: 32 -> 48"]


@pytest.mark.parametrize("snapshot, why", [
    (b"", "empty or not valid JSON"),
    (json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "epoch_0001"},
                                        {"checkpoint_dir_name": "epoch_0002"}],
                 "latest_checkpoint_result": {"checkpoint_dir_name": "epoch_0002"}}).encode(), "names epoch_0002"),
    (json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "epoch_0001"}],
                 "latest_checkpoint_result": {"checkpoint_dir_name": "epoch_0001"}}).encode(), None),
])
def test_a_damaged_ray_snapshot_is_set_aside(tmp_path, snapshot, why):
    """A full disk leaves Ray's snapshot empty; the advised delete of a damaged checkpoint leaves it naming a
    folder that is gone. Either would stop every rerun inside Ray; the project's own checkpoints decide."""
    _checkpoint(tmp_path / "checkpoints" / "epoch_0001")
    path = tmp_path / "checkpoints" / checkpoint.RAY_SNAPSHOT
    path.write_bytes(snapshot)
    got = checkpoint.set_aside_damaged_ray_snapshot(str(tmp_path))
    if why is None:
        assert got is None and path.read_bytes() == snapshot
    else:
        assert why in got and not path.exists()
        assert (tmp_path / "checkpoints" / (checkpoint.RAY_SNAPSHOT + ".damaged")).read_bytes() == snapshot


def test_a_spent_failure_budget_says_so():
    from pipeline.training.attempts import explain_failure

    err = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection reset by peer")
    assert explain_failure(err, 1, 0) == "training failed: RuntimeError: [../gloo/transport/tcp/pair.cc:534] " \
                                          "Connection reset by peer"
    msg = explain_failure(err, 3, 2)
    assert msg.startswith("training failed 3 times, and run.max_failures=2 allows 2 restart(s): the failure "
                          "budget is spent. The last failure: RuntimeError: ") and "raise run.max_failures" in msg
    assert explain_failure(err, 2, 2).startswith("training failed: ")  # a restart was still left


def test_a_lost_node_with_no_replacement_is_named_with_what_no_longer_fits():
    from pipeline.training.attempts import explain_failure

    class WorkerGroupStartupTimeoutError(Exception):  # Ray Train's, by name (unit tests import no Ray)
        pass

    class ControllerError(Exception):  # ray.train.v2's: its message is "...controller error:\n" + the failure's
        def __init__(self, failure):
            super().__init__("Training failed due to controller error:\n" + str(failure))
            self.controller_failure = failure

    for failure in (WorkerGroupStartupTimeoutError(2), RuntimeError("")):  # the second: Ray says nothing at all
        msg = explain_failure(ControllerError(failure), 1, 3, "runs/r/checkpoints/epoch_0002",
                              "2 workers of 1 CPU")
        assert msg.startswith("training failed: the cluster lost room for the training workers (2 workers of 1 CPU "
                              "no longer fit on its remaining nodes"), msg
        assert "the newest checkpoint, runs/r/checkpoints/epoch_0002, is intact" in msg
        assert "scaling.resource_wait_s" in msg and "\n" not in msg
    assert "WorkerGroupStartupTimeoutError" in explain_failure(ControllerError(WorkerGroupStartupTimeoutError(2)), 1, 0)
