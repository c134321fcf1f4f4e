"""Collation: the one place where records become an objective's batch.

What a batch holds is read from the objective's declaration (`mimo_ds.objectives`): its student roles, in the
languages its schedule gives the row's write position (or, for a kind whose record names its language, that
language), and its teacher roles (English, the teacher's prompt on queries), each role's texts built by
`role_texts`. With a teacher cache (`mimo_ds.data.teacher_cache`) the teacher roles are looked up by write position
instead of tokenised, each lookup checked against the sample id and the exact teacher text the cache encoded.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from mimo_ds.batch import Batch, Tokens
from mimo_ds.data.reading import Positioned
from mimo_ds.data.teacher_cache import TeacherCache, teacher_texts
from mimo_ds.objectives import Objective, role_texts


def load_tokenizer(tokenizer: Any, what: str) -> Any:
    """A tokenizer object as given, or loaded from a path (offline: the path must hold the tokenizer files)."""
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except OSError as exc:
        raise ValueError(f"cannot load the {what} tokenizer from {tokenizer}: {exc}") from exc


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> Tokens:
    # padding="longest" = dynamic padding; the side is the tokenizer's own (left for decoder teachers).
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


class Collator:
    """Records of `objective`'s kind → its `Batch`. Picklable: a loader worker gets a copy, and opens the
    teacher cache (memory maps are not for pickling) at its first batch."""

    def __init__(self, objective: type[Objective], languages: Sequence[str], seed: int, *,
                 student_tokenizer: Any, student_prompts: tuple[str, str], student_max_length: int,
                 teacher_tokenizer: Any, teacher_query_prompt: str, teacher_passage_prompt: str = "",
                 teacher_max_length: int,
                 teacher_cache: str | os.PathLike[str] | None) -> None:
        self.objective = objective
        self.kind = objective.shards
        self.schedule = objective.schedule(languages, seed)
        self.student_tok = load_tokenizer(student_tokenizer, "student")
        self.student_prompts = student_prompts
        self.student_max_length = student_max_length
        self.teacher_tok = load_tokenizer(teacher_tokenizer, "teacher")
        self.teacher_prompts = (teacher_query_prompt, teacher_passage_prompt)
        self.teacher_max_length = teacher_max_length
        self.teacher_cache = teacher_cache
        self._cache: TeacherCache | None = None

    def _languages(self, chunk: list[Positioned]) -> tuple[list[dict[str, str]] | None, dict[str, list[str]]]:
        """Each row's language per student role (from the schedule, or a tagged record's own), and the same as lists."""
        roles = self.objective.student_roles
        if self.schedule is None:
            return None, {role.name: [self.kind.language(r, role.side) for _, r in chunk] for role in roles}
        plans = [self.schedule(pos) for pos, _ in chunk]
        return plans, {role.name: [p[role.name] for p in plans] for role in roles}

    def __call__(self, chunk: list[Positioned]) -> Batch:
        records = [r for _, r in chunk]
        plans, languages = self._languages(chunk)
        student = role_texts(self.objective.student_roles, records, self.kind, plans, self.student_prompts)
        batch = Batch(ids=[r["id"] for r in records], languages=languages,
                      student={role: tokenize(self.student_tok, texts, self.student_max_length)
                               for role, texts in student.items()})
        if not self.objective.needs_teacher():
            return batch
        teacher = teacher_texts(self.objective, records, *self.teacher_prompts)
        if self.teacher_cache is None:
            batch.teacher = {role: tokenize(self.teacher_tok, texts, self.teacher_max_length)
                             for role, texts in teacher.items()}
        else:
            if self._cache is None:
                self._cache = TeacherCache.open(self.teacher_cache)
            batch.teacher_embeddings = self._cache.take([pos for pos, _ in chunk], batch.ids, teacher)
        return batch
