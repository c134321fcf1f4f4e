"""`student.gradient_checkpointing`: every layer recomputes its activations in backward, through transformers' current
switch (no FutureWarning), and the gradients equal those of the same student without it."""

import warnings

import torch
from test_trim import _tiny_model
from transformers import AutoTokenizer

from mimo_ds.config import StudentConfig
from mimo_ds.models.student import build_student


def test_checkpointed_student_has_the_plain_students_gradients(tmp_path):
    _tiny_model(tmp_path / "m", seed=5)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    batch = tok(["ab cd", "fed cab ba", "j"], padding=True, return_tensors="pt")
    grads = {}
    for checkpointed in (False, True):
        cfg = StudentConfig(path=str(tmp_path / "m"), gradient_checkpointing=checkpointed, attn_implementation="eager")
        torch.manual_seed(0)  # the same random projection
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            student = build_student(cfg, 7, None).train()
        layers = student.encoder.encoder.layer
        assert [layer.gradient_checkpointing for layer in layers] == [checkpointed] * len(layers)
        torch.manual_seed(3)  # the same dropout masks: non-reentrant recomputation replays the RNG state
        out = student(batch["input_ids"], batch["attention_mask"])
        (out.emb.square().sum() + out.proj.sum()).backward()
        grads[checkpointed] = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 10
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-6, msg=name)
