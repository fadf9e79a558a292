"""Ray stays at the edges; every command has --help; bad input fails before any Ray work."""
import subprocess
import sys

import pytest

from pipeline.cli import build_parser

PURE = ["pipeline.config", "pipeline.models", "pipeline.losses", "pipeline.metrics", "pipeline.checkpoint",
        "pipeline.sweep", "pipeline.storage", "pipeline.data.transforms", "pipeline.data.karpathy",
        "pipeline.cca", "pipeline.cca_encoder", "pipeline.ppmi", "pipeline.word_embeddings", "pipeline.baselines",
        "pipeline.optimisation", "pipeline.data.epoch_plan", "pipeline.data.batcher",
        "pipeline.data.local_passes", "pipeline.gallery"]


def test_pure_modules_do_not_import_ray():
    code = f"import sys; import {', '.join(PURE)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [[], ["run"], ["train"], ["tune"], ["cca"], ["embeddings"], ["index"], ["evaluate"], ["search"], ["data"],
                                  ["data", "synth"], ["data", "convert-karpathy"], ["data", "inspect"], ["keys"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: pipeline" in capsys.readouterr().out


def _cli(args, cwd):
    code = ("import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("extra,needle", [
    (["--set", "train.epoch=2"], "unknown key 'train.epoch' (did you mean train.epochs?)"),
    (["--set", "data.train=/no/such/dir"], "data.train: /no/such/dir does not exist"),
    (["--set", "train.batch_size=255"], "not divisible by scaling.num_workers=2"),
    (["--set", "data.train={tmp}/empty"], "data.train: the 1 shard(s) it matches hold no samples"),
])
def test_bad_input_is_one_line_before_ray(tmp_path, extra, needle):
    import tarfile

    cfg = tmp_path / "c.yaml"
    (tmp_path / "t").mkdir()
    (tmp_path / "empty").mkdir()
    tarfile.open(tmp_path / "empty" / "0.tar", "w").close()
    with tarfile.open(tmp_path / "t" / "0.tar", "w") as tar:
        tar.add(cfg.parent / "empty" / "0.tar", arcname="k.txt")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    cfg.write_text(f"data: {{train: {tmp_path}/t, val: {tmp_path}/t}}\n")
    out = _cli(["train", "--config", str(cfg), *extra], tmp_path)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr and out.stdout.strip() == "NO_RAY"
