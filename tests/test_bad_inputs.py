"""Bad input to every `mimo-ds` command: one message naming the input, the documented exit status, no traceback, and
nothing of the user's changed or created.

Each probe is one row of PROBES: the command after `mimo-ds` (a first word `bash` runs a script of the checkout),
the status, phrases the message must hold, and the paths that must be left as they were (`keep`: same files, same
bytes) or never made (`absent`); `{fx}`, the shared fixture folder, may appear in all of them. Most run in this
process through `mimo_ds.cli.main` (the console script's code, without a fresh interpreter per probe); those with
`process=True` run as `python -m mimo_ds.cli` to prove the real entry. To add a probe, add a row; a fixture it
needs goes into `fx`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mimo_ds.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass(frozen=True)
class Probe:
    name: str
    argv: tuple[str, ...]
    phrases: tuple[str, ...]
    status: int = 2
    keep: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    process: bool = False


def probe(name: str, argv: str | list[str], *phrases: str, **kw) -> Probe:
    """A row of the table; `argv` as one string is split on spaces (use a list when a word holds one)."""
    words = argv.split() if isinstance(argv, str) else argv
    return Probe(name, tuple(words), phrases, **kw)


FULL = "{fx}/full"  # a folder of the user's: every command must leave it as it is
STORE = "sqlite:///{fx}/m.db"  # an MLflow store with one run that logged loss/total and mlir/ndcg_at_20

PROBES = [
    # -- mimo-ds (no sub-command), argparse ---------------------------------------------------------------------
    probe("no-command", "", "the following arguments are required: command"),
    # -- eval -----------------------------------------------------------------------------------------------------
    probe("eval-missing-model", "eval --model {fx}/nope --benchmark {fx}/bench", "model folder not found: ",
          "/nope", process=True),
    probe("eval-hub-name-offline", "eval --model intfloat/no-such-model --benchmark {fx}/bench",
          "model folder not found: intfloat/no-such-model", "never downloads"),
    probe("eval-model-is-a-file", "eval --model {fx}/afile --benchmark {fx}/bench", "afile is a file"),
    probe("eval-folder-without-config", f"eval --model {FULL} --benchmark {{fx}}/bench", "not a model folder",
          keep=(FULL,)),
    probe("eval-unloadable-model", "eval --model {fx}/model_empty_config --benchmark {fx}/bench",
          "model_empty_config: cannot load the model"),
    probe("eval-bad-modules-json", "eval --model {fx}/model_bad_modules --benchmark {fx}/bench",
          "modules.json: not valid JSON"),
    probe("eval-benchmark-without-qrels", "eval --model {fx}/model_empty_config --benchmark {fx}/bench_no_qrels",
          "bench_no_qrels: no qrels found"),
    probe("eval-missing-benchmark", "eval --model {fx}/model_empty_config --benchmark {fx}/nobench",
          "nobench: benchmark folder not found"),
    probe("eval-benchmark-bad-json", "eval --model {fx}/model_empty_config --benchmark {fx}/bench_bad_json",
          "corpus.jsonl:2: not valid JSON"),
    probe("eval-benchmark-not-utf8", "eval --model {fx}/model_empty_config --benchmark {fx}/bench_latin1",
          "queries.jsonl: not UTF-8"),
    probe("eval-benchmark-json-list", "eval --model {fx}/model_empty_config --benchmark {fx}/bench_meta_list",
          "benchmark.json: expected a JSON object"),
    probe("eval-benchmark-bad-regex", "eval --model {fx}/model_empty_config --benchmark {fx}/bench_bad_regex",
          "doc_group_pattern", "is not a regex"),
    probe("eval-benchmark-no-queries", "eval --model {fx}/model_empty_config --benchmark {fx}/bench_no_queries",
          "queries.jsonl: no queries"),
    probe("eval-same-benchmark-twice", "eval --model {fx}/model_empty_config --benchmark {fx}/bench {fx}/bench",
          "benchmark names must differ"),
    probe("eval-exclude-self-not-mlir",
          "eval --model {fx}/model_empty_config --benchmark {fx}/bench_monolingual --exclude-self",
          "exclude_self is an option of the mlir protocol"),
    probe("eval-figures-is-a-file", "eval --model {fx}/model_empty_config --benchmark {fx}/bench --figures {fx}/afile",
          "--figures {fx}/afile is a file", keep=("{fx}/afile",)),
    probe("eval-out-is-a-folder", f"eval --model {{fx}}/model_empty_config --benchmark {{fx}}/bench --out {FULL}",
          "is a folder", keep=(FULL,)),
    probe("eval-out-exists", "eval --model {fx}/model_empty_config --benchmark {fx}/bench --out {fx}/afile",
          "--out {fx}/afile exists", "--overwrite", keep=("{fx}/afile",)),
    probe("eval-out-exists-overwrite-checks-on", "eval --model {fx}/model_empty_config --benchmark {fx}/bench "
          "--out {fx}/afile --overwrite", "model_empty_config: cannot load the model", keep=("{fx}/afile",)),
    probe("eval-k-zero", "eval --model {fx}/model_empty_config --benchmark {fx}/bench --k 10 0",
          "argument --k: must be at least 1"),
    probe("eval-device-typo", "eval --model {fx}/model_empty_config --benchmark {fx}/bench --device gpu",
          "'gpu' is not a torch device"),
    # -- compare / ui ---------------------------------------------------------------------------------------------
    probe("compare-unknown-metric", f"compare --tracking-uri {STORE} --metrics no/such_metric",
          "--metrics 'no/such_metric': no selected run logged such a metric", "loss/total"),
    probe("compare-metric-typo", f"compare --tracking-uri {STORE} --metrics loss/totl", "close names: loss/total"),
    probe("compare-glob-matching-nothing", f"compare --tracking-uri {STORE} --metrics nope/*", "'nope/*'"),
    probe("compare-missing-store", "compare --tracking-uri sqlite:///{fx}/none.db", "no MLflow database at",
          absent=("{fx}/none.db",)),
    probe("compare-default-store-missing", "compare", "no MLflow database at", absent=("{fx}/mlflow.db",)),
    probe("compare-not-a-store-uri", "compare --tracking-uri foo://bar", "foo:// is not an MLflow store"),
    probe("compare-store-path-without-scheme", "compare --tracking-uri {fx}/m.db", "write sqlite:///"),
    probe("compare-unknown-experiment", f"compare --tracking-uri {STORE} -e nope", "no experiment named nope"),
    probe("compare-unknown-run-id", f"compare --tracking-uri {STORE} -r 0123abc", "run ids not found", "0123abc"),
    probe("compare-unknown-group-tag", f"compare --tracking-uri {STORE} --group-by nosuchtag",
          "--group-by nosuchtag: no selected run has this tag"),
    probe("compare-html-is-a-folder", f"compare --tracking-uri {STORE} --html {FULL}", "is a folder", keep=(FULL,)),
    probe("compare-bad-tag", f"compare --tracking-uri {STORE} --tag stage", "expected KEY=VALUE"),
    probe("ui-missing-store", "ui --tracking-uri sqlite:///{fx}/none.db", "no MLflow database at",
          absent=("{fx}/none.db",)),
    probe("ui-port-out-of-range", "ui --port 70000", "a TCP port is at most 65535"),
    # -- shards (converters) --------------------------------------------------------------------------------------
    probe("django-demo-unknown-language", "shards django-demo --out {fx}/o --languages en,de,xx",
          "has no catalogues for ['xx']", absent=("{fx}/o",)),
    probe("parallel-sentences-unknown-language", "shards parallel-sentences {fx}/ps --out {fx}/o --languages qq",
          "for the language(s) qq", absent=("{fx}/o",)),
    probe("parallel-sentences-one-language-missing",
          "shards parallel-sentences {fx}/ps --out {fx}/o --languages de,fr", "for the language(s) fr",
          absent=("{fx}/o",)),
    probe("parallel-sentences-missing-root", "shards parallel-sentences {fx}/nope --out {fx}/o --languages de",
          "nope: no such folder", absent=("{fx}/o",)),
    probe("malformed-language-code", "shards parallel-sentences {fx}/ps --out {fx}/o --languages DE!",
          "not language codes", absent=("{fx}/o",)),
    probe("jsonl-missing-file", "shards jsonl {fx}/nope.jsonl --out {fx}/o --kind pairs", "nope.jsonl not found",
          absent=("{fx}/o",)),
    probe("jsonl-given-a-folder", f"shards jsonl {FULL} --out {{fx}}/o --kind pairs", "is a folder",
          absent=("{fx}/o",), keep=(FULL,)),
    probe("jsonl-bad-fixed-language", "shards jsonl {fx}/pairs.jsonl --out {fx}/o --kind pairs --lang de,fr",
          "one language code expected", absent=("{fx}/o",)),
    probe("jsonl-rows-without-languages", "shards jsonl {fx}/rows.jsonl --out {fx}/o --kind rows",
          "name the languages every row must hold", absent=("{fx}/o",)),
    probe("hf-disk-not-a-dataset", f"shards hf-disk {FULL} --out {{fx}}/o --kind pairs", "not a saved HF dataset",
          absent=("{fx}/o",), keep=(FULL,)),
    probe("id-aligned-missing-files", "shards id-aligned {fx}/ps --out {fx}/o --languages en,de", "not found",
          absent=("{fx}/o",)),
    probe("id-aligned-bad-pattern", ["shards", "id-aligned", "{fx}/ps", "--out", "{fx}/o", "--languages", "en,de",
                                     "--queries", "{lng}.tsv"], "a pattern may hold only {lang} and {name}",
          absent=("{fx}/o",)),
    probe("gettext-missing-catalogue", "shards gettext --catalogue de={fx}/nope --out {fx}/o --kind pairs",
          "no .po/.mo catalogue", absent=("{fx}/o",)),
    probe("shards-out-not-empty", f"shards jsonl {{fx}}/pairs.jsonl --out {FULL} --kind pairs", "not empty",
          keep=(FULL,)),
    probe("shards-out-is-a-file", "shards jsonl {fx}/pairs.jsonl --out {fx}/afile --kind pairs", "is a file",
          keep=("{fx}/afile",)),
    probe("shards-nothing-kept", "shards jsonl {fx}/short_pairs.jsonl --out {fx}/o_empty --kind pairs",
          "no record was kept"),
    probe("shards-size-zero", "shards jsonl {fx}/pairs.jsonl --out {fx}/o --kind pairs --shard-size 0",
          "--shard-size: must be at least 1", absent=("{fx}/o",)),
    # -- shards verify --------------------------------------------------------------------------------------------
    probe("verify-missing-folder", "shards verify {fx}/nope", "nope: no such folder"),
    probe("verify-a-file", "shards verify {fx}/afile", "afile is a file"),
    probe("verify-no-index", f"shards verify {FULL}", "index.json not found", keep=(FULL,)),
    probe("verify-bad-index", "shards verify {fx}/bad_index", "index.json is not valid JSON"),
    probe("verify-json-into-a-folder", f"shards verify {{fx}}/pairs --json {FULL}", "is a folder", keep=(FULL,)),
    probe("verify-workers-zero", "shards verify {fx}/pairs --workers 0", "--workers: must be at least 1"),
    probe("verify-a-shard-that-is-a-folder", "shards verify {fx}/broken_pairs --mode size", "shard-000001.tar",
          "1 with problems", status=1),
    # -- teacher-cache ---------------------------------------------------------------------------------------------
    probe("teacher-cache-missing-config", "teacher-cache --config {fx}/nope.yaml", "run config not found"),
    probe("teacher-cache-malformed-set", ["teacher-cache", "--config", f"{TINY}/stage1.yaml", "--set",
                                          "optim.lr=[1e-3"], "--set optim.lr: the value '[1e-3' is not valid YAML"),
    probe("teacher-cache-unknown-key", f"teacher-cache --config {TINY}/stage1.yaml --set optim.lrr=1", "optim.lrr"),
    probe("teacher-cache-no-teacher", f"teacher-cache --config {TINY}/baseline_infonce.yaml", "no teacher section"),
    probe("teacher-cache-missing-shards", f"teacher-cache --config {TINY}/stage1.yaml --set data.train={{fx}}/nope",
          "nope: no such folder"),
    probe("teacher-cache-wrong-shard-kind",
          f"teacher-cache --config {TINY}/stage2_mimo.yaml --set data.train={{fx}}/pairs", "holds pairs"),
    probe("teacher-cache-window-zero", f"teacher-cache --config {TINY}/stage1.yaml --window 0",
          "--window: must be at least 1"),
    probe("teacher-cache-part-not-whole-windows",
          f"teacher-cache --config {TINY}/stage1.yaml --set data.train={{fx}}/pairs --out {{fx}}/tc --window 3 "
          "--part-size 10", "part size (10) must be a multiple of the window (3)", absent=("{fx}/tc",)),
    # -- benchmark mini ---------------------------------------------------------------------------------------------
    probe("benchmark-mini-into-non-empty", f"benchmark mini {FULL}", "not empty", keep=(FULL,)),
    probe("benchmark-mini-into-a-file", "benchmark mini {fx}/afile", "is a file", keep=("{fx}/afile",)),
    probe("benchmark-mini-unknown-language", "benchmark mini {fx}/o --languages en xx", "['xx']",
          absent=("{fx}/o",)),
    probe("benchmark-mini-min-languages", "benchmark mini {fx}/o --languages en de --min-languages 5",
          "min_languages 5 is more than the 2 languages", absent=("{fx}/o",)),
    # -- export / demo (argument checks) ---------------------------------------------------------------------------
    probe("export-missing-checkpoint", "export --checkpoint {fx}/nope --out {fx}/o", "--checkpoint",
          "no such folder", absent=("{fx}/o",)),
    probe("export-checkpoint-is-a-file", "export --checkpoint {fx}/afile --out {fx}/o", "is a file",
          absent=("{fx}/o",)),
    probe("export-not-a-checkpoint", f"export --checkpoint {FULL} --out {{fx}}/o", "{fx}/full", "checkpoint",
          absent=("{fx}/o",), keep=(FULL,)),
    probe("export-onto-existing-folder", f"export --checkpoint {{fx}}/pairs --out {FULL}", "not empty",
          keep=(FULL, "{fx}/pairs")),
    probe("demo-into-a-users-folder", f"demo --out {FULL}", "an earlier demo did not write", keep=(FULL,)),
    probe("demo-out-is-a-file", "demo --out {fx}/afile", "is a file", keep=("{fx}/afile",)),
    probe("demo-zero-steps", "demo --out {fx}/o --stage1-steps 0", "must be at least 1", absent=("{fx}/o",)),
    # -- train's preflight (more, with runs behind them, in tests/test_run_failures.py and test_checkpoint.py) -------
    probe("train-nproc-zero", f"train --nproc 0 --config {TINY}/stage1.yaml", "--nproc must be a positive number"),
    probe("train-missing-config", "train --config {fx}/nope.yaml", "run config not found: "),
    probe("train-unknown-key-under-nproc", f"train --nproc 2 --config {TINY}/stage1.yaml --set optim.lrr=1",
          "optim.lrr: Extra inputs are not permitted", process=True),
    probe("train-output-dir-is-a-file", f"train --config {TINY}/stage1.yaml --set output_dir={{fx}}/afile",
          "output_dir {fx}/afile is a file", keep=("{fx}/afile",)),
    probe("train-missing-shards", f"train --config {TINY}/stage1.yaml --set data.train={{fx}}/nope "
          "--set output_dir={fx}/run", "data.train: no index.json in {fx}/nope", absent=("{fx}/run",)),
    probe("train-missing-student", f"train --config {TINY}/stage1.yaml --set student.path={{fx}}/nope "
          "--set output_dir={fx}/run", "model folder {fx}/nope has no config.json", absent=("{fx}/run",)),
    # -- train's --set parsing, and through the Slurm scripts -------------------------------------------------------
    probe("train-malformed-set", ["train", "--config", f"{TINY}/stage1.yaml", "--set", "optim.lr=[1e-3"],
          "--set optim.lr: the value '[1e-3' is not valid YAML"),
    probe("slurm-malformed-set", ["bash", "slurm/stage2.sh", "--dry-run", "--set", "optim.lr=[1e-3"],
          "--set optim.lr: the value '[1e-3' is not valid YAML", process=True),
]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _benchmark(folder: Path, corpus=True, queries=True, qrels=True) -> Path:
    folder.mkdir()
    if corpus:
        _write_jsonl(folder / "corpus.jsonl", [{"_id": "d1", "text": "Der Zug fährt um sieben.", "lang": "de"},
                                               {"_id": "d2", "text": "The train leaves at seven.", "lang": "en"}])
    if queries:
        _write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "wann fährt der Zug", "lang": "de"}])
    if qrels:
        _write_jsonl(folder / "qrels.jsonl", [{"query_id": "q1", "doc_id": "d1", "score": 1}])
    return folder


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Every input the probes name, made once: good ones beside the bad, so each probe has one thing wrong."""
    from mimo_ds.data.shards import write_shards

    fx = tmp_path_factory.mktemp("bad_inputs")
    (fx / "afile").write_text("not a folder\n")
    (fx / "full").mkdir()
    (fx / "full" / "keep.txt").write_text("the user's work\n")
    (fx / "full" / "data").mkdir()
    _benchmark(fx / "bench")
    _benchmark(fx / "bench_no_qrels", qrels=False)
    _benchmark(fx / "bench_bad_json", corpus=False)
    (fx / "bench_bad_json" / "corpus.jsonl").write_text('{"_id": "d1", "text": "a", "lang": "en"}\n{"_id": \n')
    _benchmark(fx / "bench_latin1", queries=False)
    (fx / "bench_latin1" / "queries.jsonl").write_bytes(
        '{"_id": "q1", "text": "wann fährt der Zug", "lang": "de"}\n'.encode("latin-1"))
    (_benchmark(fx / "bench_meta_list") / "benchmark.json").write_text("[1, 2]")
    (_benchmark(fx / "bench_monolingual") / "benchmark.json").write_text(json.dumps({"protocol": "multi-monolingual"}))
    (_benchmark(fx / "bench_bad_regex") / "benchmark.json").write_text(json.dumps({"doc_group_pattern": "(?P<group"}))
    _benchmark(fx / "bench_no_queries", queries=False)
    (fx / "bench_no_queries" / "queries.jsonl").write_text("\n")
    (fx / "model_empty_config").mkdir()
    (fx / "model_empty_config" / "config.json").write_text("{}")
    (fx / "model_bad_modules").mkdir()
    (fx / "model_bad_modules" / "modules.json").write_text("[{")
    (fx / "ps" / "Tatoeba").mkdir(parents=True)
    (fx / "ps" / "Tatoeba" / "Tatoeba-en-de-train.tsv.gz").write_bytes(gzip.compress(b"Hello there.\tHallo da.\n"))
    _write_jsonl(fx / "pairs.jsonl", [{"lang": "de", "text": "Guten Morgen allerseits.", "en": "Good morning all."}])
    _write_jsonl(fx / "short_pairs.jsonl", [{"lang": "de", "text": "Ja.", "en": "Yes."}])  # under min_chars
    _write_jsonl(fx / "rows.jsonl", [{"query": {"en": "q"}, "passage": {"en": "p"}}])
    records = [{"id": f"p{i}", "lang": "de", "text": f"Hallo Nummer {i}", "en": f"Hello number {i}"} for i in range(5)]
    write_shards(records, fx / "pairs", "pairs", 2)
    write_shards(records, fx / "broken_pairs", "pairs", 2)
    (fx / "broken_pairs" / "shard-000001.tar").unlink()
    (fx / "broken_pairs" / "shard-000001.tar").mkdir()
    (fx / "bad_index").mkdir()
    (fx / "bad_index" / "index.json").write_text("{not json")
    _mlflow_store(f"sqlite:///{fx / 'm.db'}")
    return fx


def _mlflow_store(uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("mimo-ds"), run_name="r1")
    client.log_metric(run.info.run_id, "loss/total", 0.5)
    client.log_metric(run.info.run_id, "mlir/ndcg_at_20", 0.25)
    client.set_terminated(run.info.run_id)


def _snapshot(path: Path) -> dict[str, str] | None:
    """Every file under `path` (or `path` itself) → sha256 of its bytes; None when nothing is there."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in files}


def _run(p: Probe, fx: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    argv = [word.replace("{fx}", str(fx)) for word in p.argv]
    if p.process:
        env = {**os.environ, **OFFLINE, **p.env, "MIMO_PYTHON": sys.executable}
        cmd = argv if argv[0] == "bash" else [sys.executable, "-m", "mimo_ds.cli", *argv]
        proc = subprocess.run(cmd, cwd=ROOT if argv[0] == "bash" else fx, env=env, capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stdout, proc.stderr
    for key, value in p.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(fx)
    monkeypatch.setattr(os, "execv", _no_exec)  # `ui` replaces the process with a server once its input is good
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def _no_exec(path, args):
    raise AssertionError(f"the command went on to start {args[:4]} instead of refusing its input")


@pytest.mark.timeout(120)  # a probe that no longer refuses may start the real work (a demo, a training run)
@pytest.mark.parametrize("p", PROBES, ids=[p.name for p in PROBES])
def test_bad_input_gets_one_message(p: Probe, fx: Path, capsys, monkeypatch):
    watched = {path: _snapshot(Path(path.replace("{fx}", str(fx)))) for path in p.keep}
    status, out, err = _run(p, fx, capsys, monkeypatch)
    assert status == p.status, f"status {status}, expected {p.status}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in err + out, err
    said = err if p.status == 2 else out
    for phrase in (phrase.replace("{fx}", str(fx)) for phrase in p.phrases):
        assert phrase in said, f"{phrase!r} not in the message:\n{said}"
    if p.status == 2:
        assert (err + out).count("error:") == 1, f"the error must be said once:\n{err}"
        assert err.rstrip("\n").count("\n") <= 1 or "invalid run config" in err, f"one line expected:\n{err}"
    for path, before in watched.items():
        assert before is not None and _snapshot(Path(path.replace("{fx}", str(fx)))) == before, f"{path} changed"
    for path in p.absent:
        assert not Path(path.replace("{fx}", str(fx))).exists(), f"{path} was created"


def test_a_bug_in_trains_checks_keeps_its_traceback(monkeypatch, tmp_path):
    """Only bad input (a UserError) becomes train's one `error:` line: a ValueError the checking code raises of
    its own is a bug and propagates."""
    import mimo_ds.ds_config
    from mimo_ds.train import checked, parse_args

    def broken(*args, **kwargs):
        raise ValueError("a bug, not an input")

    monkeypatch.setattr(mimo_ds.ds_config, "build_ds_config", broken)
    with pytest.raises(ValueError, match="a bug, not an input"):
        checked(parse_args(["--config", str(TINY / "stage1.yaml"), "--set", f"output_dir={tmp_path / 'run'}"]))


def test_a_zero_byte_compressed_source_is_counted_as_unreadable(tmp_path):
    """A .tsv.gz of 0 bytes (an interrupted download) is not a compressed file with no lines: it is counted."""
    from mimo_ds.data.converters import convert_parallel_sentences

    root = tmp_path / "ps"
    (root / "Tatoeba").mkdir(parents=True)
    (root / "Europarl").mkdir()
    empty = root / "Tatoeba" / "Tatoeba-en-de-train.tsv.gz"
    empty.write_bytes(b"")
    (root / "Europarl" / "Europarl-en-de-train.tsv.gz").write_bytes(
        gzip.compress("The train leaves at seven tonight.\tDer Zug fährt heute um sieben ab.\n".encode()))
    index = json.loads(convert_parallel_sentences(root, tmp_path / "out", ["de"],
                                                  corpora=["Europarl", "Tatoeba"]).read_text())
    report = index["filter_report"]
    assert report["read_errors"] == {str(empty): {"truncated_compressed": 1}}
    assert any(str(empty) in note and "empty (0 bytes)" in note for note in report["notes"])
    assert report["languages"]["de"]["kept"] == 1  # the good file beside it is converted


EVAL_MISSING_MODEL = ["eval", "--model", "{fx}/nope", "--benchmark", "{fx}/bench"]


def _assert_traceback_then_message(status: int, err: str, fx: Path) -> None:
    assert status == 2, err
    assert "Traceback (most recent call last)" in err and "check_model_folder" in err
    assert err.rstrip().endswith(f"error: model folder not found: {fx / 'nope'}")
    assert err.count("error: model folder not found") == 1


def test_mimo_debug_shows_the_traceback_of_a_user_error_with_the_same_status(fx):
    """MIMO_DEBUG=1 adds the traceback (here through the real entry); the status and the message stay the same."""
    argv = [word.replace("{fx}", str(fx)) for word in EVAL_MISSING_MODEL]
    proc = subprocess.run([sys.executable, "-m", "mimo_ds.cli", *argv], cwd=fx, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **OFFLINE, "MIMO_DEBUG": "1"})
    _assert_traceback_then_message(proc.returncode, proc.stderr, fx)


def test_debug_flag_does_the_same_and_passes_it_to_child_processes(fx, capsys, monkeypatch):
    monkeypatch.setenv("MIMO_DEBUG", "0")  # restored after the test: --debug sets it for the processes it starts
    status, _, err = _run(probe("debug-flag", ["--debug", *EVAL_MISSING_MODEL]), fx, capsys, monkeypatch)
    _assert_traceback_then_message(status, err, fx)
    assert os.environ["MIMO_DEBUG"] == "1"


def test_under_a_launcher_only_rank_0_speaks(fx, capsys, monkeypatch):
    """`torchrun -m mimo_ds.cli eval ...`: every rank refuses the same input; one message per job, not per rank."""
    for rank, said in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        status, out, err = _run(probe("rank", EVAL_MISSING_MODEL), fx, capsys, monkeypatch)
        assert status == 2 and (out + err).count("model folder not found") == said, (rank, err)


def test_a_bug_is_not_turned_into_a_message(monkeypatch):
    """Only UserError becomes `error: ...`: any other exception reaches the caller with its traceback."""
    import mimo_ds.eval.cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(mimo_ds.eval.cli, "run_eval", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["eval", "--model", "m", "--benchmark", "b"])
