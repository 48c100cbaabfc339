"""Tiny dataset folders in the readers' layouts (Twitter CoNLL, MNRE, JSON lines) for the data tests."""

import json
from pathlib import Path

T17_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]

# train ends without a blank line (like the UMT Twitter-2015 files); post 2 has an orphan I- tag,
# a lone U+00A0 token and a U+FE0F token, which must be kept verbatim.
TRAIN = (
    "IMGID:100\nRT\tO\nJohn\tB-PER\nSmith\tI-PER\nin\tO\nLondon\tB-LOC\n\n"
    "IMGID:200\nBlackburn\tB-MISC\nFestival\tI-MISC\nAcme\tI-ORG\n\u00a0\tO\n\ufe0f\tO"
)

VALID = "IMGID:300\nParis\tB-LOC\nrocks\tO\n\n"

TEST = "IMGID:400\nAcme\tB-ORG\n\n\nIMGID:500\nhi\tO\n\n"


def write_twitter(folder: Path, train: str = TRAIN, valid: str = VALID, test: str = TEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        (folder / name).write_text(text, encoding="utf-8", newline="")
    return folder


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG fake")
    return path


REL2ID = {"None": 0, "/per/per/peer": 1, "/per/org/member_of": 2}


def mnre_line(token=("Messi", "joins", "PSG", "today"), h=(0, 1), t=(2, 3), rel="/per/org/member_of", img="a.jpg"):
    record = {
        "token": list(token),
        "h": {"name": " ".join(token[h[0] : h[1]]), "pos": list(h)},
        "t": {"name": " ".join(token[t[0] : t[1]]), "pos": list(t)},
        "img_id": img,
        "relation": rel,
    }
    return repr(record)  # a Python literal with single quotes, like the upstream files


def write_mnre(root: Path, train_lines=None) -> Path:
    (root / "txt").mkdir(parents=True, exist_ok=True)
    (root / "ours_rel2id.json").write_text(json.dumps(REL2ID))
    train_lines = train_lines or [mnre_line(), mnre_line(h=(2, 3), t=(0, 1), rel="None", img="b.jpg")]
    (root / "txt" / "ours_train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "txt" / "ours_val.txt").write_text(mnre_line(rel="/per/per/peer", t=(1, 4)) + "\n")
    (root / "txt" / "ours_test.txt").write_text(mnre_line(img="c.jpg"))
    return root


def write_lines(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
