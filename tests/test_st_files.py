"""The sentence-transformers files (`mimo_ds.models.st_files`): a folder they complete loads in sentence-transformers
and embeds as the plain formula says (pooling over real tokens, then L2 normalisation, the prompt prepended)."""

import pytest
import torch
import torch.nn.functional as F
from test_trim import _texts, _tiny_model
from transformers import AutoModel, AutoTokenizer

from mimo_ds.models.st_files import ST_FILES, write_st_files


def _plain(folder, texts, pooling):
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"]
    rows = torch.arange(len(texts))
    if pooling == "mean":
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    else:
        pooled = hidden[rows, mask.sum(1) - 1]
    return F.normalize(pooled, dim=-1)


@pytest.mark.parametrize("pooling,seed", [("mean", 3), ("cls", 5), ("last", 7)])
def test_the_folder_embeds_as_the_plain_formula(tmp_path, pooling, seed):
    from sentence_transformers import SentenceTransformer

    rng = _tiny_model(tmp_path, seed)
    prompts = ("bad ", "faced ")
    write_st_files(tmp_path, pooling, 32, 48, prompts)
    assert all((tmp_path / name).exists() for name in ST_FILES)
    texts = _texts(rng, 5, "abcdefghij")
    st = SentenceTransformer(str(tmp_path), device="cpu")
    assert st.max_seq_length == 48 and st.similarity_fn_name == "cosine"
    for name, prompt in zip(("query", "passage"), prompts):
        got = st.encode(texts, prompt_name=name, convert_to_tensor=True)
        torch.testing.assert_close(got.cpu(), _plain(tmp_path, [prompt + t for t in texts], pooling),
                                   rtol=1e-4, atol=1e-5)


def test_no_prompts_no_prompts_file(tmp_path):
    _tiny_model(tmp_path, 11)
    write_st_files(tmp_path, "mean", 32, 64, ("", ""))
    assert not (tmp_path / "config_sentence_transformers.json").exists()
    assert (tmp_path / "modules.json").is_file() and (tmp_path / "1_Pooling" / "config.json").is_file()
