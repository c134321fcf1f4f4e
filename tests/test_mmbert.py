"""The paper's second student, mmBERT-base (a ModernBERT encoder), on CPU: its recipes validate, and a tiny random-init
model of the same architecture, built through the project's student builder with the recipes' pooling, embeds each
row of a padded batch as the pooling's plain formula over the raw transformers model's token states does."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, ModernBertConfig

from mimo_ds.config import StudentConfig, load_config
from mimo_ds.models.student import build_student, student_size

ROOT = Path(__file__).resolve().parents[1]
MMBERT_RECIPES = sorted((ROOT / "recipes").glob("*mmbert*.yaml"))


def test_mmbert_recipes_mirror_the_xlmr_ones_with_the_authors_student_and_pooling():
    assert [p.name for p in MMBERT_RECIPES] == ["baseline_infonce_mmbert.yaml", "baseline_lakda_mmbert.yaml",
                                                "baseline_xlco_mmbert.yaml", "stage1_mmbert.yaml",
                                                "stage2_mimo_mmbert.yaml"]
    for recipe in MMBERT_RECIPES:
        mine = load_config(recipe)
        xlmr = load_config(recipe.with_name(recipe.name.replace("_mmbert", "")))
        assert (mine.student.path, mine.student.pooling) == ("jhu-clsp/mmBERT-base", "cls"), recipe.name
        assert mine.output_dir != xlmr.output_dir, recipe.name
        differ = {k for k, v in mine.model_dump().items() if v != xlmr.model_dump()[k]}
        assert differ <= {"name", "output_dir", "init_from", "student"}, (recipe.name, differ)
        assert mine.student.model_dump(exclude={"path", "pooling"}) == \
            xlmr.student.model_dump(exclude={"path", "pooling"}), recipe.name
    stage2 = load_config(ROOT / "recipes" / "stage2_mimo_mmbert.yaml")
    assert stage2.init_from == load_config(ROOT / "recipes" / "stage1_mmbert.yaml").output_dir


@pytest.fixture(scope="module")
def tiny_modernbert(tmp_path_factory) -> Path:
    """ModernBERT with mmBERT's layer pattern (global attention every 3rd layer, sliding windows between) at odd, tiny
    sizes; the window (6 tokens) is shorter than the longest row, so the sliding-window mask is exercised."""
    torch.manual_seed(1234)
    config = ModernBertConfig(vocab_size=173, hidden_size=36, intermediate_size=53, num_hidden_layers=4,
                              num_attention_heads=3, global_attn_every_n_layers=3, local_attention=6,
                              max_position_embeddings=64, pad_token_id=0)
    folder = tmp_path_factory.mktemp("tiny-modernbert")
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def test_student_embeds_a_padded_batch_as_cls_pooling_of_the_raw_models_states(tiny_modernbert):
    pooling = load_config(ROOT / "recipes" / "stage1_mmbert.yaml").student.pooling
    assert pooling == "cls"  # the formula below is cls pooling's: the first token's state of each row
    teacher_dim = 29
    student = build_student(StudentConfig(path=str(tiny_modernbert), pooling=pooling), teacher_dim, None).eval()
    assert student.encoder.config.model_type == "modernbert"
    assert student.encoder.config._attn_implementation == "sdpa"  # CPU: no flash-attn, so PyTorch's sdpa

    lengths = [17, 5, 11, 1, 14]
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 173, (len(lengths), max(lengths)), generator=gen)
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask  # right padding with pad id 0, as the student's tokenizer pads
    with torch.no_grad():
        out = student(ids, mask)
        raw = AutoModel.from_pretrained(tiny_modernbert, attn_implementation="eager").eval()
        batched = raw(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = torch.stack([raw(input_ids=ids[i:i + 1, :n]).last_hidden_state[0, 0] for i, n in enumerate(lengths)])

    torch.testing.assert_close(out.emb, batched[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.emb, alone, atol=1e-6, rtol=0)  # padding changes no row's vector
    assert out.emb.shape == (len(lengths), 36) and out.proj.shape == (len(lengths), teacher_dim)
    p = student.projection
    torch.testing.assert_close(out.proj, alone @ p.weight.T + p.bias, atol=1e-6, rtol=0)
    total, largest = student_size(StudentConfig(path=str(tiny_modernbert), pooling=pooling), teacher_dim, None)
    assert (total, largest) == (sum(x.numel() for x in student.parameters()),
                                max(x.numel() for x in student.parameters()))
