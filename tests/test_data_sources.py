"""Source-side faults through every converter they apply to: each counted by reason in the index's filter report,
none ending the conversion, the good records beside them kept."""

import argparse
import bz2
import gzip
import json
from pathlib import Path

import polib
import pytest

from mimo_ds.data import converters
from mimo_ds.data.cli import register
from mimo_ds.data.gettext import build_gettext_shards
from mimo_ds.data.shards import iter_shard, read_index
from mimo_ds.data.sources import MAX_LINE_BYTES

EN, DE = "Good morning to everyone here.", "Guten Morgen an alle hier."
EN2, DE2 = "The train leaves at seven tonight.", "Der Zug fährt heute um sieben ab."
ROW = {"query": {"en": "when does the train leave", "de": "wann fährt der Zug"},
       "passage": {"en": EN2, "de": DE2}}
HUGE = "x" * (2 * 2**20)  # a 2 MB line
assert len(HUGE) > MAX_LINE_BYTES


def records(index_path: Path) -> list[dict]:
    index = read_index(index_path.parent)
    return [m.record for s in index.shards for m in iter_shard(index.path(s))]


def report(index_path: Path) -> dict:
    return json.loads(index_path.read_text())["filter_report"]


def write(path: Path, lines: list[bytes], end: bytes = b"\n", truncate: bool = False) -> Path:
    """`lines` joined by `end`, compressed by the suffix; `truncate` cuts the compressed file to its first 60%."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = end.join(lines) + end
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".bz2":
        data = bz2.compress(data)
    path.write_bytes(data[: int(len(data) * 0.6)] if truncate else data)
    return path


def tsv(en: str, de: str) -> bytes:
    return f"{en}\t{de}".encode()


def jpair(en: str, de: str, lang: str = "de") -> bytes:
    return json.dumps({"lang": lang, "text": de, "en": en}).encode()


def jrow(rid: str, **texts: str) -> bytes:
    row = json.loads(json.dumps(ROW))
    for key, value in texts.items():
        field, lang = key.split("_")
        row[field][lang] = value
    return json.dumps({"id": rid, **row}).encode()


def parallel_sentences(tmp_path, lines, suffix=".gz", **kw):
    write(tmp_path / "ps" / "Tatoeba" / f"Tatoeba-en-de-train.tsv{suffix}", lines, **kw)
    return converters.convert_parallel_sentences(tmp_path / "ps", tmp_path / "out", ["de"], corpora=["Tatoeba"])


def jsonl(tmp_path, lines, kind="pairs", name="c.jsonl", **kw):
    path = write(tmp_path / name, lines, **{k: v for k, v in kw.items() if k in ("end", "truncate")})
    extra = {k: v for k, v in kw.items() if k == "languages"}
    if kind == "rows":
        extra = {"languages": ["de"]}
    return converters.convert_jsonl(path, tmp_path / "out", kind, **extra)


def id_aligned(tmp_path, queries_de: list[bytes], suffix="", **kw):
    root = tmp_path / "mm"
    write(root / "q" / f"en.tsv{suffix}", [b"1\twhen does the train leave", b"2\twhat is rain"])
    write(root / "q" / f"de.tsv{suffix}", queries_de, **kw)
    write(root / "p" / "en.tsv", [f"10\t{EN2}".encode(), b"20\tRain is water falling from clouds."])
    write(root / "p" / "de.tsv", [f"10\t{DE2}".encode(), b"20\tRegen ist Wasser aus den Wolken."])
    write(root / "pairs.tsv", [b"1\t10", b"2\t20"])
    return converters.convert_id_aligned(root, tmp_path / "out", ["en", "de"], queries=f"q/{{lang}}.tsv{suffix}",
                                         passages="p/{lang}.tsv", pairs="pairs.tsv")


def hf_disk(tmp_path, kind, columns):
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "ds"))
    extra = {"languages": ["de"]} if kind == "rows" else {}
    return converters.convert_hf_disk(tmp_path / "ds", tmp_path / "out", kind, **extra)


def gettext(tmp_path, entries, kind="pairs", mo=False, raw=None):
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    for msgid, msgstr in entries:
        po.append(polib.POEntry(msgid=msgid, msgstr=msgstr))
    path = tmp_path / "de" / ("django.mo" if mo else "django.po")
    path.parent.mkdir(parents=True, exist_ok=True)
    po.save_as_mofile(str(path)) if mo else po.save(str(path))
    if raw is not None:
        path.write_bytes(raw(path.read_bytes()))
    return build_gettext_shards({"de": [path]}, tmp_path / "out", kind), path


# -- invalid UTF-8 -------------------------------------------------------------------------------------------------
BAD_UTF8 = b"\xff\xfe broken \xc3"


@pytest.mark.parametrize("converter", ["parallel-sentences", "jsonl-pairs", "jsonl-rows", "id-aligned"])
def test_invalid_utf8_lines(tmp_path, converter):
    if converter == "parallel-sentences":
        out, where = parallel_sentences(tmp_path, [tsv(EN, DE), BAD_UTF8]), "ps/Tatoeba/Tatoeba-en-de-train.tsv.gz"
    elif converter == "jsonl-pairs":
        out, where = jsonl(tmp_path, [jpair(EN, DE), BAD_UTF8]), "c.jsonl"
    elif converter == "jsonl-rows":
        out, where = jsonl(tmp_path, [jrow("a"), BAD_UTF8], kind="rows"), "c.jsonl"
    else:
        out, where = id_aligned(tmp_path, [b"1\twann f\xe4hrt der Zug", b"2\twas ist Regen"]), "mm/q/de.tsv"
    assert report(out)["read_errors"] == {str(tmp_path / where): {"invalid_utf8": 1}}
    assert len(records(out)) >= 1


def test_invalid_utf8_catalogue_is_counted_not_fatal(tmp_path):
    out, path = gettext(tmp_path, [(EN, DE)], raw=lambda b: b.replace(b"Guten", b"Gu\xfften"))
    rep = report(out)
    assert rep["read_errors"] == {str(path): {"unreadable_catalogue": 1}} and rep["kept"] == 0
    assert any(str(path) in note and "decode" in note for note in rep["notes"])


# -- NUL bytes -----------------------------------------------------------------------------------------------------
NUL_DE = "Guten\x00 Morgen an alle."


@pytest.mark.parametrize("converter", ["parallel-sentences", "jsonl-pairs", "jsonl-rows", "hf-pairs", "hf-rows",
                                       "id-aligned", "gettext-pairs", "gettext-rows"])
def test_nul_bytes_are_dropped_as_control_characters(tmp_path, converter):
    if converter == "parallel-sentences":
        out = parallel_sentences(tmp_path, [tsv(EN2, DE2), tsv(EN, NUL_DE)])
    elif converter == "jsonl-pairs":
        out = jsonl(tmp_path, [jpair(EN2, DE2), jpair(EN, NUL_DE)])
    elif converter == "jsonl-rows":
        out = jsonl(tmp_path, [jrow("a"), jrow("b", passage_de=NUL_DE)], kind="rows")
    elif converter == "hf-pairs":
        out = hf_disk(tmp_path, "pairs", {"lang": ["de", "de"], "text": [DE2, NUL_DE], "en": [EN2, EN]})
    elif converter == "hf-rows":
        bad = json.loads(jrow("b", query_de=NUL_DE))
        out = hf_disk(tmp_path, "rows", {"id": ["a", "b"], "query": [ROW["query"], bad["query"]],
                                         "passage": [ROW["passage"], bad["passage"]]})
    elif converter == "id-aligned":
        out = id_aligned(tmp_path, [b"1\twann f\xc3\xa4hrt der Zug", b"2\twas ist\x00 Regen"])
    else:
        six = "Please enter the correct username and password"
        entries = [(EN2, DE2), (six, "Bitte\x00 geben Sie den Benutzernamen und das Passwort ein")]
        out, _ = gettext(tmp_path, entries, kind=converter.split("-")[1])
    rep = report(out)
    if converter.endswith("rows") or converter == "id-aligned":
        assert rep["rows"].get("control_characters") == 1
        assert rep["rows"].get("kept", 0) == 1
    else:
        assert rep["languages"]["de"]["dropped"] == {"control_characters": 1}
        assert rep["languages"]["de"]["kept"] == 1
    assert not any("\x00" in text for r in records(out) for text in strings(r))


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)


# -- a 2 MB line ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("converter", ["parallel-sentences", "jsonl-pairs", "jsonl-rows", "id-aligned"])
def test_a_two_megabyte_line_is_skipped_and_counted(tmp_path, converter):
    if converter == "parallel-sentences":
        out, where = parallel_sentences(tmp_path, [tsv(EN, HUGE), tsv(EN2, DE2)]), "ps/Tatoeba/Tatoeba-en-de-train.tsv.gz"
    elif converter == "jsonl-pairs":
        out, where = jsonl(tmp_path, [jpair(EN, HUGE), jpair(EN2, DE2)]), "c.jsonl"
    elif converter == "jsonl-rows":
        out, where = jsonl(tmp_path, [jrow("a", passage_de=HUGE), jrow("b")], kind="rows"), "c.jsonl"
    else:
        out, where = id_aligned(tmp_path, [f"1\t{HUGE}".encode(), b"2\twas ist Regen"]), "mm/q/de.tsv"
    assert report(out)["read_errors"] == {str(tmp_path / where): {"line_too_long": 1}}
    assert len(records(out)) >= 1 and all(len(json.dumps(r)) < 1000 for r in records(out))


@pytest.mark.parametrize("kind", ["gettext", "hf"])
def test_a_two_megabyte_text_is_too_long_for_a_pair(tmp_path, kind):
    if kind == "gettext":
        out, _ = gettext(tmp_path, [(EN, HUGE), (EN2, DE2)])
    else:
        out = hf_disk(tmp_path, "pairs", {"lang": ["de", "de"], "text": [HUGE, DE2], "en": [EN, EN2]})
    assert report(out)["languages"]["de"] == {"kept": 1, "dropped": {"too_long": 1}}


# -- truncated compressed sources ----------------------------------------------------------------------------------
@pytest.mark.parametrize("converter, suffix", [("parallel-sentences", ".gz"), ("jsonl-pairs", ".gz"),
                                               ("jsonl-pairs", ".bz2"), ("id-aligned", ".gz")])
def test_a_truncated_compressed_source_is_reported_as_such(tmp_path, converter, suffix):
    many = 400  # enough lines that the first 60% of the compressed bytes hold whole lines
    if converter == "parallel-sentences":
        lines = [tsv(f"{EN} number {i}", f"{DE} Nummer {i}") for i in range(many)]
        out = parallel_sentences(tmp_path, lines, suffix=suffix, truncate=True)
        where = tmp_path / f"ps/Tatoeba/Tatoeba-en-de-train.tsv{suffix}"
    elif converter == "jsonl-pairs":
        lines = [jpair(f"{EN} number {i}", f"{DE} Nummer {i}") for i in range(many)]
        out, where = jsonl(tmp_path, lines, name=f"c.jsonl{suffix}", truncate=True), tmp_path / f"c.jsonl{suffix}"
    else:
        lines = [b"1\twann faehrt der Zug"] + [f"{i}\tFrage {i}".encode() for i in range(3, many)]
        out, where = id_aligned(tmp_path, lines, suffix=suffix, truncate=True), tmp_path / f"mm/q/de.tsv{suffix}"
    rep = report(out)
    assert rep["read_errors"][str(where)] == {"truncated_compressed": 1}
    assert any(str(where) in note and "ends early" in note for note in rep["notes"])
    if suffix == ".gz":  # gzip streams line by line: the lines before the break are kept (bz2 loses its block)
        assert len(records(out)) >= 1


def test_a_truncated_mo_catalogue_is_reported_as_such(tmp_path):
    out, path = gettext(tmp_path, [(EN, DE), (EN2, DE2)], mo=True, raw=lambda b: b[: len(b) * 2 // 3])
    rep = report(out)
    assert rep["read_errors"] == {str(path): {"truncated_catalogue": 1}} and rep["kept"] == 0


# -- CRLF line ends ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("converter", ["parallel-sentences", "jsonl-pairs", "id-aligned", "gettext"])
def test_crlf_line_ends_read_like_lf(tmp_path, converter):
    if converter == "parallel-sentences":
        out = parallel_sentences(tmp_path, [tsv(EN, DE), tsv(EN2, DE2)], end=b"\r\n")
    elif converter == "jsonl-pairs":
        out = jsonl(tmp_path, [jpair(EN, DE), jpair(EN2, DE2)], end=b"\r\n")
    elif converter == "id-aligned":
        out = id_aligned(tmp_path, [b"1\twann faehrt der Zug", b"2\twas ist Regen"], end=b"\r\n")
    else:
        out, _ = gettext(tmp_path, [(EN, DE), (EN2, DE2)], raw=lambda b: b.replace(b"\n", b"\r\n"))
    rep = report(out)
    assert rep["read_errors"] == {} and rep["dropped"] == 0
    texts = [json.dumps(r) for r in records(out)]
    assert texts and not any("\\r" in t for t in texts)
    if converter != "id-aligned":
        assert {r["text"] for r in records(out) if r["lang"] == "de"} == {DE, DE2}


# -- duplicate ids -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("converter", ["jsonl-rows", "hf-rows", "id-aligned", "gettext-rows"])
def test_duplicate_ids_are_counted(tmp_path, converter):
    if converter == "jsonl-rows":
        out = jsonl(tmp_path, [jrow("a"), jrow("a", passage_de="Ein anderer Text hier.")], kind="rows")
        assert report(out)["rows"] == {"kept": 1, "duplicate_id": 1}
    elif converter == "hf-rows":
        out = hf_disk(tmp_path, "rows", {"id": ["a", "a"], "query": [ROW["query"]] * 2,
                                         "passage": [ROW["passage"]] * 2})
        assert report(out)["rows"] == {"kept": 1, "duplicate_id": 1}
    elif converter == "id-aligned":
        out = id_aligned(tmp_path, [b"1\twann faehrt der Zug", b"1\tnoch einmal", b"2\twas ist Regen"])
        assert report(out)["read_errors"] == {str(tmp_path / "mm/q/de.tsv"): {"duplicate_id": 1}}
        assert {r["query"]["de"] for r in records(out)} == {"wann faehrt der Zug", "was ist Regen"}  # first kept
    else:
        six = "Please enter the correct username and password"
        out, _ = gettext(tmp_path, [(six, "Bitte Benutzernamen und Passwort eingeben"),
                                    (six + " ", "Bitte Namen und Passwort angeben")], kind="rows")
        assert report(out)["languages"]["de"]["dropped"] == {"gettext_duplicate": 1}


def test_repeated_pairs_in_an_id_aligned_pairs_file_are_counted(tmp_path):
    root = tmp_path / "mm"
    id_aligned(tmp_path, [b"1\twann faehrt der Zug", b"2\twas ist Regen"])
    write(root / "pairs.tsv", [b"1\t10\t20", b"1\t10\t30", b"2\t20\t10"])
    out = converters.convert_id_aligned(root, tmp_path / "again", ["en", "de"], queries="q/{lang}.tsv",
                                        passages="p/{lang}.tsv", pairs="pairs.tsv")
    assert report(out)["read_errors"] == {str(root / "pairs.tsv"): {"repeated_pair": 1}}
    assert len(records(out)) == 2


# -- unknown language codes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("converter", ["jsonl", "hf"])
def test_unknown_language_codes_are_counted(tmp_path, converter):
    codes = ["de", "fr", "not a code", "", "DE"]
    if converter == "jsonl":
        out = jsonl(tmp_path, [jpair(f"{EN} {i}", f"{DE} {i}", lang) for i, lang in enumerate(codes)],
                    languages=["de"])
        where = str(tmp_path / "c.jsonl")
    else:
        import datasets

        datasets.Dataset.from_dict({"lang": codes, "text": [f"{DE} {i}" for i in range(5)],
                                    "en": [f"{EN} {i}" for i in range(5)]}).save_to_disk(str(tmp_path / "ds"))
        out = converters.convert_hf_disk(tmp_path / "ds", tmp_path / "out", "pairs", languages=["de"])
        where = str(tmp_path / "ds")
    assert report(out)["read_errors"] == {where: {"unknown_language": 4}}  # fr is not selected; the rest malformed
    assert {r["lang"] for r in records(out)} == {"de", "en"}


def test_malformed_codes_without_a_language_list(tmp_path):
    out = jsonl(tmp_path, [jpair(EN, DE, "pt_BR"), jpair(EN2, DE2, "de DE")])
    assert report(out)["read_errors"] == {str(tmp_path / "c.jsonl"): {"unknown_language": 1}}
    assert {r["lang"] for r in records(out)} == {"pt_BR", "en"}


@pytest.mark.parametrize("argv", [["jsonl", "X", "--kind", "pairs", "--languages", "de,not a code"],
                                  ["gettext", "--kind", "pairs", "--catalogue", "d e=X"]])
def test_cli_refuses_malformed_language_codes(tmp_path, argv, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["shards", *argv, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "not language codes" in capsys.readouterr().err
