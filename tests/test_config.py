"""Run config: recipes validate, overrides apply, bad values are rejected with the key named, before any process group."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mimo_ds.config import ConfigError, load_config
from mimo_ds.ds_config import build_ds_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_every_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.deepspeed.is_file()


def test_paper_defaults_in_recipes():
    s2 = load_config(ROOT / "recipes/stage2_mimo.yaml")
    assert (s2.objective.lam, s2.objective.scale, s2.batch.per_device, s2.batch.mini_batch, s2.optim.lr) == (
        0.2, 20.0, 2048, 32, 2e-5)
    s1 = load_config(ROOT / "recipes/stage1.yaml")
    assert (s1.batch.per_device, s1.optim.lr, s1.student.max_length, s1.teacher.query_prompt) == (128, 1e-4, 256, "")


def test_projection_section_defaults_to_refusing_a_missing_p_and_names_unknown_keys():
    assert load_config(ROOT / "recipes/stage2_mimo.yaml").projection.fresh is False
    assert load_config(ROOT / "recipes/stage2_mimo.yaml", ["projection.fresh=true"]).projection.fresh is True
    with pytest.raises(ConfigError, match=r"projection\.fersh"):
        load_config(ROOT / "recipes/stage2_mimo.yaml", ["projection.fersh=true"])


def test_overrides_parse_yaml_values():
    cfg = load_config(ROOT / "recipes/tiny/stage1.yaml",
                      ["optim.lr=3e-4", "data.languages=[de, fr]", "tracking.tags.group=sweep"])
    assert cfg.optim.lr == 3e-4
    assert cfg.data.languages == ["de", "fr"]
    assert cfg.tracking.tags == {"group": "sweep"}


@pytest.mark.parametrize("override, named", [
    ("objective.lam=1.5", "objective.lam"),
    ("objective.lamda=0.3", "objective.lamda"),
    ("batch.per_device=0", "batch.per_device"),
    ("batch.mini_batch=99", "mini_batch"),
    ("student.pooling=max", "student.pooling"),
    ("objective.kind=mimo", "stage 2"),
    ("teacher=null", "teacher"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.lr=[1e-3", "--set optim.lr: the value '[1e-3' is not valid YAML"),  # a YAML error, not a traceback
    ("data.languages={de: x", "--set data.languages: the value '{de: x'"),
])
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "recipes/tiny/stage1.yaml", [override])
    assert named in str(err.value)


def test_batch_arithmetic_checked_against_deepspeed_json(tmp_path):
    ds = json.loads((ROOT / "ds_configs/zero3.json").read_text())
    ds["train_batch_size"] = 64
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = load_config(ROOT / "recipes/tiny/stage1.yaml", [f"deepspeed={tmp_path / 'ds.json'}"])
    with pytest.raises(ConfigError, match="train_batch_size"):
        build_ds_config(cfg, world_size=2, device=torch.device("cpu"))  # 8 × 1 × 2 = 16 ≠ 64
    assert build_ds_config(cfg, world_size=8, device=torch.device("cpu"))["train_batch_size"] == 64


def test_global_batch_and_precision_conflicts(tmp_path):
    cfg = load_config(ROOT / "recipes/tiny/stage1.yaml", ["batch.global_batch=24"])
    with pytest.raises(ConfigError, match="global_batch"):
        build_ds_config(cfg, world_size=2, device=torch.device("cpu"))
    ds = json.loads((ROOT / "ds_configs/zero3.json").read_text())
    ds["bf16"] = {"enabled": True}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = load_config(ROOT / "recipes/tiny/stage1.yaml", [f"deepspeed={tmp_path / 'ds.json'}"])  # precision fp32
    with pytest.raises(ConfigError, match="bf16.enabled"):
        build_ds_config(cfg, world_size=1, device=torch.device("cpu"))


def test_deepspeed_json_may_not_carry_an_optimizer(tmp_path):
    ds = json.loads((ROOT / "ds_configs/zero2.json").read_text())
    ds["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-3}}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = load_config(ROOT / "recipes/tiny/stage1.yaml", [f"deepspeed={tmp_path / 'ds.json'}"])
    with pytest.raises(ConfigError, match="optimizer"):
        build_ds_config(cfg, world_size=1, device=torch.device("cpu"))


def test_cli_rejects_bad_config_before_any_process_group(tmp_path):
    """Exit code 2 and a message naming the key; no DeepSpeed/distributed import happens on this path."""
    code = ("import sys; from mimo_ds.train import main; rc = main(sys.argv[1:]); "
            "assert 'deepspeed' not in sys.modules and 'torch.distributed.run' not in sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(ROOT / "recipes/tiny/stage1.yaml"),
                           "--set", "objective.scale=-1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "objective.scale" in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "mimo_ds.train", "--config", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not found" in missing.stderr
