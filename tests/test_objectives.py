"""Each objective's value and gradients against an independent float64 formula (and a hand-worked case)."""

import math
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

from mimo_ds.batch import Embedded
from mimo_ds.objectives import Objective, ObjectiveSettings, Role, build_objective, objective_class, objective_kinds
from mimo_ds.objectives.schedules import same_language
from mimo_ds.objectives.terms import distill_loss
from mimo_ds.record_kinds import ROWS


def objective(kind: str, **settings):
    """The registered objective `kind` with these hyper-parameters, validated like a run config's section."""
    return build_objective(objective_class(kind).Settings(kind=kind, **settings))


def _plain_infonce(q, p, scale):
    """-mean_i log softmax_j(scale·cos(q_i, p_j))[i], written out without cross_entropy."""
    qn = q / q.norm(dim=-1, keepdim=True)
    pn = p / p.norm(dim=-1, keepdim=True)
    logits = scale * qn @ pn.T
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def _plain_cos_distance(x, y):
    return (1 - (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).mean()


def _leaves(*shapes, seed):
    """fp32 leaves (the InfoNCE kernel accumulates in fp32 whatever the input dtype)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, requires_grad=True) for s in shapes]


def _f64(tensors):
    return [t.detach().double().requires_grad_(True) for t in tensors]


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def _close(a, b):
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5)


def test_infonce_hand_worked():
    """Two orthogonal pairs: logits diag = s, off = 0 → loss = log(1 + e^{-s})."""
    q = torch.eye(2)
    obj = objective("xlco", scale=3.0)
    out = obj({"query": Embedded(q, None), "passage": Embedded(q.clone(), None)}, {})
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-3.0)), rel=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "mse", "l2"])
def test_distill_distances(distance):
    x, t = _leaves((7, 5), (7, 5), seed=1)
    ours = distill_loss(x, t, distance)
    plain = {"cosine": F.cosine_embedding_loss(x, t, torch.ones(7, dtype=torch.float64)),
             "mse": ((x - t) ** 2).mean(),
             "l2": ((x - t) ** 2).sum(-1).sqrt().mean()}[distance]
    torch.testing.assert_close(ours, plain)
    for a, b in zip(_grads(ours, [x, t]), _grads(plain, [x, t])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_mimo_value_and_gradients(lam):
    B, d, D = 13, 6, 9
    q, p, pq, pp, tq, tp = _leaves((B, d), (B, d), (B, D), (B, D), (B, D), (B, D), seed=2)
    obj = objective("mimo", lam=lam, scale=20.0)
    out = obj({"query": Embedded(q, pq), "passage": Embedded(p, pp)},
              {"teacher_query": tq.detach(), "teacher_passage": tp.detach()})
    q2, p2, pq2, pp2, tq2, tp2 = _f64([q, p, pq, pp, tq, tp])
    plain = lam * _plain_infonce(q2, p2, 20.0) + (1 - lam) * 0.5 * (
        _plain_cos_distance(pq2, tq2.detach()) + _plain_cos_distance(pp2, tp2.detach()))
    _close(out.loss, plain)
    for a, b in zip(_grads(out.loss, [q, p, pq, pp]), _grads(plain, [q2, p2, pq2, pp2])):
        _close(a, b)
    assert set(out.parts) == {"infonce", "distill_query", "distill_passage"}


class _Table(torch.nn.Module):
    """A sentence-transformers module whose "sentence_embedding" is a row of a fixed table, picked by `index`."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, features: dict) -> dict:
        return {**features, "sentence_embedding": self.table[features["index"]]}


def test_infonce_matches_sentence_transformers_mnrl():
    """The in-batch loss and its gradients equal sentence-transformers' MultipleNegativesRankingLoss, built and called
    through its public API on a model whose embeddings are the same tensors."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    q, p = _leaves((11, 8), (11, 8), seed=3)
    table = _Table(torch.cat([q, p]).detach().clone())
    mnrl = MultipleNegativesRankingLoss(SentenceTransformer(modules=[table], device="cpu"), scale=20.0)
    rows = torch.arange(11)
    reference = mnrl([{"index": rows}, {"index": rows + 11}], labels=None)
    ours = objective("infonce")({"query": Embedded(q, None), "passage": Embedded(p, None)}, {})
    _close(ours.loss, reference)
    reference.backward()
    for mine, theirs in zip(_grads(ours.loss, [q, p]), table.table.grad.split(11)):
        _close(mine, theirs)


def test_lakda_value_and_gradients():
    B, d = 10, 7
    qa, qb, p = _leaves((B, d), (B, d), (B, d), seed=4)
    alpha = 0.5
    out = objective("lakda", alpha=alpha)(
        {"query": Embedded(qa, None), "query_b": Embedded(qb, None), "passage": Embedded(p, None)}, {})
    qa2, qb2, p2 = _f64([qa, qb, p])
    n = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    pa = torch.softmax(n(qa2) @ n(p2).T, dim=-1)
    pb = torch.softmax(n(qb2) @ n(p2).T, dim=-1)
    kl = (pb * (pb.log() - pa.log())).sum() / B
    plain = (1 - alpha) * _plain_infonce(qa2, p2, 20.0) + alpha * kl
    _close(out.loss, plain)
    for a, b in zip(_grads(out.loss, [qa, qb, p]), _grads(plain, [qa2, qb2, p2])):
        _close(a, b)


@pytest.mark.parametrize("declared, message", [
    ({"shards": "rows"}, "shards must be a RecordKind"),
    ({"schedule": None}, "must declare a schedule"),
    ({"student_roles": (Role("query", "text"),)}, r"roles \['query'\] read sides that rows records lack"),
    ({"swept": {"weight": "w"}}, r"swept names settings it does not have: \['weight'\]"),
])
def test_a_declaration_that_contradicts_itself_is_refused_at_definition(declared, message):
    """The checks `mimo_ds.objectives.base` runs when a class is defined, each made to fail once."""
    settings = type("BadSettings", (ObjectiveSettings,), {"__annotations__": {"kind": Literal["bad"]},
                                                          "swept": declared.get("swept", {})})
    body = {"kind": "bad", "stage": 2, "shards": declared.get("shards", ROWS), "Settings": settings,
            "student_roles": declared.get("student_roles", (Role("query", "query", query=True),))}
    if "schedule" not in declared:
        body["schedule"] = classmethod(lambda cls, languages, seed: same_language(languages, seed, roles=("query",)))
    with pytest.raises(TypeError, match=message):
        type("Bad", (Objective,), body)
    assert "bad" not in objective_kinds()
