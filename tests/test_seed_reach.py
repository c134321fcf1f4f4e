"""A run's `seed` (what `mimo-ds demo --seeds` varies between an arm's runs) reaches both things it must change, through
the trainer's own functions in the order `mimo_ds.trainer.setup` calls them: the order the loader deals the rows
and the language pair each row gets (`build_loader` from the run config), and every freshly initialised weight
(the tiny recipe's random encoder and the projection P, built after `seed_everything`). The same seed repeats
exactly; the demo's end-to-end test checks that two seeds' runs differ."""

from __future__ import annotations

from pathlib import Path

import torch
from corpus import make_rows
from test_trainer import TINY

from mimo_ds.config import load_config
from mimo_ds.models.student import build_student, student_tokenizer
from mimo_ds.trainer import build_loader, seed_everything


def _stream(rows: Path, seed: int) -> list[tuple[list[str], dict[str, list[str]]]]:
    """One epoch of the XLCO loader built from the tiny recipe at `seed`: ids and role languages per batch."""
    cfg = load_config(TINY / "baseline_xlco.yaml", [f"data.train={rows}", f"seed={seed}", "data.shuffle_buffer=40"])
    loader = build_loader(cfg, student_tokenizer(cfg.student, None), None, 0, 1)
    return [(batch.ids, batch.languages) for batch in loader]


def test_the_config_seed_drives_data_order_and_language_pairs(tmp_path):
    rows = make_rows(tmp_path / "rows", n=61, shard_size=7)
    first = _stream(rows, 3)
    assert _stream(rows, 3) == first
    other = _stream(rows, 4)
    flat = [i for ids, _ in first for i in ids]
    assert sorted(flat) == sorted(i for ids, _ in other for i in ids), "another seed reads the same rows"
    assert [ids for ids, _ in other] != [ids for ids, _ in first], "another seed, another order"
    by_id = {i: (langs["query"][k], langs["passage"][k]) for ids, langs in first for k, i in enumerate(ids)}
    by_id_other = {i: (langs["query"][k], langs["passage"][k]) for ids, langs in other for k, i in enumerate(ids)}
    assert by_id != by_id_other, "another seed, other language pairs for the same rows"


def _fresh_weights(seed: int) -> dict[str, torch.Tensor]:
    """The stage-1 student (random tiny encoder + P) as setup builds it: seeded first, then built."""
    cfg = load_config(TINY / "stage1.yaml", [f"seed={seed}"])
    seed_everything(cfg.seed, rank=0)
    return build_student(cfg.student, 48, None).state_dict()


def test_the_config_seed_drives_every_fresh_weight():
    first, again, other = _fresh_weights(5), _fresh_weights(5), _fresh_weights(6)
    assert first.keys() == other.keys() and "projection.weight" in first
    assert all(torch.equal(first[k], again[k]) for k in first)
    random = [k for k in first if not torch.equal(first[k], torch.zeros_like(first[k]))
              and not torch.equal(first[k], torch.ones_like(first[k])) and first[k].is_floating_point()]
    assert "projection.weight" in random and len(random) > 10
    assert all(not torch.equal(first[k], other[k]) for k in random), \
        [k for k in random if torch.equal(first[k], other[k])]
