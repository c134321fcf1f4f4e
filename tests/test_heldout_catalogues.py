"""The out-of-domain benchmark from whole held-out catalogues: a hand-worked tiny case (what is kept, what a shared
text drops), catalogue names across languages, and the refusals (reserved wheels, a file on both sides)."""

from pathlib import Path

import pytest

from mimo_ds.data.gettext import half_text
from mimo_ds.data.wheels import ReservedCatalogueError
from mimo_ds.eval.benchmark import load_benchmark
from mimo_ds.eval.heldout_catalogues import (
    build_heldout_catalogue_benchmark,
    catalogue_id,
    split_catalogues,
)

LANGS = ("en", "de", "hi", "vi")
ONE = "The file could not be saved to the disk"  # 9 words
TWO = "Your password must contain at least eight characters"
SHARED_DE = "Please choose a different name for this page"  # its German text is also a training translation
IN_TRAINING = "This message also exists in the training catalogue"
SHORT = "Save the page"


def _po(path: Path, entries: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'msgid "{m}"\nmsgstr "{t}"\n\n' for m, t in entries.items()), encoding="utf-8")
    return path


def _catalogue(root: Path, app: str, lang: str, entries: dict[str, str]) -> Path:
    return _po(root / "site-packages" / app / "locale" / lang / "LC_MESSAGES" / "django.po", entries)


@pytest.fixture
def tiny(tmp_path):
    """Training reads app_a (German only); app_b is held out, in German, Hindi and Vietnamese."""
    train = {"de": [_catalogue(tmp_path, "app_a", "de", {IN_TRAINING: "Diese Nachricht gibt es auch im Training",
                                                         "Another name": "Bitte einen anderen Namen wählen"})]}
    held = {
        "de": [_catalogue(tmp_path, "app_b", "de", {ONE: "Die Datei konnte nicht gespeichert werden",
                                                    TWO: "Ihr Passwort muss mindestens acht Zeichen enthalten",
                                                    SHARED_DE: "Bitte einen anderen Namen wählen",
                                                    IN_TRAINING: "Noch eine Übersetzung davon",
                                                    SHORT: "Seite speichern"})],
        "hi": [_catalogue(tmp_path, "app_b", "hi", {ONE: "फ़ाइल डिस्क पर सहेजी नहीं जा सकी",
                                                    SHARED_DE: "कृपया इस पृष्ठ के लिए दूसरा नाम चुनें",
                                                    IN_TRAINING: "यह संदेश प्रशिक्षण में भी है"})],
        "vi": [_catalogue(tmp_path, "app_b", "vi", {ONE: "Không thể lưu tệp vào đĩa",
                                                    TWO: "Mật khẩu của bạn phải có ít nhất tám ký tự",
                                                    SHARED_DE: "Vui lòng chọn tên khác cho trang này"})],
    }
    return held, train


def test_whole_catalogues_make_the_benchmark_and_training_texts_never_enter(tiny, tmp_path):
    held, train = tiny
    bench = load_benchmark(build_heldout_catalogue_benchmark(tmp_path / "bench", held, train, LANGS, min_languages=3))
    docs = {(d.lang, d.text) for d in bench.corpus}
    expected = {("en", ONE), ("de", "Die Datei konnte nicht gespeichert werden"), ("hi", "फ़ाइल डिस्क पर सहेजी नहीं जा सकी"),
                ("vi", "Không thể lưu tệp vào đĩa"),
                ("en", TWO), ("de", "Ihr Passwort muss mindestens acht Zeichen enthalten"),
                ("vi", "Mật khẩu của bạn phải có ít nhất tám ký tự"),
                ("en", SHARED_DE), ("hi", "कृपया इस पृष्ठ के लिए दूसरा नाम चुनें"),
                ("vi", "Vui lòng chọn tên khác cho trang này")}  # its German copy is a training text
    assert docs == expected
    assert {(q.lang, q.text) for q in bench.queries} == {(lang, half_text(text, lang)) for lang, text in expected}
    by_doc = {d.id: d.lang for d in bench.corpus}
    for query in bench.queries:  # relevant: every language version of the query's own entry, one per language
        relevant = {did for did, rel in bench.qrels[query.id].items() if rel > 0}
        assert len({by_doc[d] for d in relevant}) == len(relevant)
    sizes = sorted(len(rels) for rels in bench.qrels.values())
    assert sizes == [3] * 6 + [4] * 4  # entries ONE (4 languages), TWO and SHARED_DE (3 each)
    assert bench.meta["heldout_catalogues"] == ["app_b:django"]
    assert bench.meta["shared_with_training"]["de"] == 1
    assert bench.meta["exclude_self"] is True and bench.meta["entries"] == 3
    assert sorted(bench.languages) == sorted(LANGS)  # Hindi and Vietnamese: languages training never read


def test_a_reserved_wheel_or_a_file_on_both_sides_is_refused(tiny, tmp_path):
    held, train = tiny
    reserved = {**held, "de": [_catalogue(tmp_path / "x", "sphinx", "de", {ONE: "Die Datei"})]}
    with pytest.raises(ReservedCatalogueError, match="reserved"):
        build_heldout_catalogue_benchmark(tmp_path / "b1", reserved, train, LANGS)
    with pytest.raises(ReservedCatalogueError, match="reserved"):
        build_heldout_catalogue_benchmark(tmp_path / "b2", held, {**train, "vi": reserved["de"]}, LANGS)
    with pytest.raises(ValueError, match="both held out and a training catalogue"):
        build_heldout_catalogue_benchmark(tmp_path / "b3", held, {**train, "hi": held["hi"]}, LANGS)


def test_catalogue_names_are_the_same_in_every_language(tmp_path):
    site = tmp_path / "lib" / "site-packages"
    assert catalogue_id(site / "django/contrib/gis/locale/de/LC_MESSAGES/django.po") == "django/contrib/gis:django"
    assert catalogue_id(site / "jupyterlab_language_pack_de_DE/locale/de_DE/LC_MESSAGES/jupyterlab.mo") == \
        catalogue_id(site / "jupyterlab_language_pack_ja_JP/locale/ja_JP/LC_MESSAGES/jupyterlab.mo") == \
        "jupyterlab_language_pack:jupyterlab"
    by_catalogue = {"a:django": {"de": [Path("a.po")]}, "b:django": {"de": [Path("b.po")], "hi": [Path("c.po")]}}
    assert split_catalogues(by_catalogue, ["b:django"]) == ({"de": [Path("b.po")], "hi": [Path("c.po")]},
                                                            {"de": [Path("a.po")]})
    with pytest.raises(ValueError, match=r"held-out catalogues \['c:django'\] are not among"):
        split_catalogues(by_catalogue, ["c:django"])
