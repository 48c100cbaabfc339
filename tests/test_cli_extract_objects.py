"""`mmib extract-objects` on tiny random detectors: a benchmark folder read back by the reader, unreadable images
counted, resuming after a SIGKILL, and two processes under `accelerate launch`."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from conftest import accelerate_cpu_launcher
from detector_folders import hand_box, noise_image, save_detr
from mmib.cli import main
from mmib.data import load_mnre, load_twitter_ner
from mmib.post_files import read_posts

IDS = {"train.txt": ["10", "11", "12"], "valid.txt": ["20"], "test.txt": ["30", "31", "32", "33"]}


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory) -> str:
    return save_detr(tmp_path_factory.mktemp("detr"))


def twitter_folder(root: Path) -> Path:
    """A Twitter-2017 folder: 8 posts, 6 images of distinct sizes, 31.jpg undecodable, 33.jpg missing."""
    data_dir = root / "twitter2017"
    (data_dir / "twitter2017_images").mkdir(parents=True)
    for split, ids in IDS.items():
        text = "".join(f"IMGID:{post_id}\nMessi\tB-PER\njoins\tO\nPSG\tB-ORG\n\n" for post_id in ids)
        (data_dir / split).write_text(text)
    for post_id in ["10", "11", "12", "20", "30", "32"]:
        size = (40 + int(post_id), 30 + int(post_id) // 2)
        noise_image(size, seed=int(post_id)).save(data_dir / "twitter2017_images" / f"{post_id}.jpg")
    (data_dir / "twitter2017_images" / "31.jpg").write_bytes(b"\xff\xd8 truncated")
    return data_dir


def run_command(arguments: list[str], capsys) -> dict:
    main(["extract-objects", *arguments, "--quiet"])
    return json.loads(capsys.readouterr().out)


def test_benchmark_folder_then_the_reader_reads_the_crops(detr_dir, tmp_path, capsys):
    data_dir = twitter_folder(tmp_path)
    out = tmp_path / "crops"
    flags = ["--detector", detr_dir, "--output_dir", str(out), "--num_crops", "2", "--dtype", "float32"]
    report = run_command([str(data_dir), *flags], capsys)
    assert (report["posts"], report["with_objects"], report["no_image"], report["unreadable"]) == (8, 6, 1, 1)
    assert report["unreadable_files"] == [str(data_dir / "twitter2017_images" / "31.jpg")]
    assert report["settings"]["num_crops"] == 2 and report["settings"]["detector"] == detr_dir
    # Every DETR query predicts the same box, so NMS keeps one object per image.
    assert report["objects"] == 6
    # The reader finds <crop_dir>/<split folder>_dict.json without being told the dictionaries.
    data = load_twitter_ner(data_dir, crop_dir=out)
    assert [len(crops) for crops in data["test"]["crops"]] == [1, 0, 1, 0]
    for split in ("train", "validation", "test"):
        for image, crops in zip(data[split]["image"], data[split]["crops"]):
            for crop_path in crops:
                with Image.open(crop_path) as crop, Image.open(image) as picture:
                    picture = picture.convert("RGB")
                    assert crop.tobytes() == picture.crop(hand_box(picture.size)).tobytes()


def test_json_dictionary_beside_the_default_pth(detr_dir, tmp_path, capsys):
    data_dir = twitter_folder(tmp_path)
    aux = data_dir / "twitter2017_aux_images"
    run_command([str(data_dir), "--detector", detr_dir, "--output_dir", str(aux)], capsys)
    for folder in ("train", "val", "test"):
        (aux / f"{folder}_dict.json").rename(data_dir / f"twitter2017_{folder}_dict.json")
    data = load_twitter_ner(data_dir)
    assert [len(crops) for crops in data["train"]["crops"]] == [1, 1, 1]
    assert data["validation"]["crops"] == [[str(aux / "val" / "crops" / "20_crop_0.png")]]


def test_raw_text_posts_that_mmib_predict_reads(detr_dir, tmp_path, capsys):
    """The posts file of `mmib predict` (raw `text`, `words`, a bare string, relative images) as it is."""
    noise_image((60, 44), seed=7).save(tmp_path / "a.png")
    rows = [
        {"id": "raw", "text": "RT @ann: Messi in Paris!", "image": "a.png"},
        {"id": "split", "words": ["Messi", "joins", "PSG"], "image": "a.png", "head": [0, 1], "tail": [2, 3]},
        "just a string, no image",
    ]
    source = tmp_path / "posts.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    report = run_command([str(source), "--detector", detr_dir, "--output_dir", str(out), "--dtype", "float32"], capsys)
    assert (report["posts"], report["with_objects"], report["no_image"], report["objects"]) == (3, 2, 1, 2)
    written = [json.loads(line) for line in (out / "posts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written[0]["text"] == rows[0]["text"] and "words" not in written[0]
    assert [row.get("crops") for row in written] == [["posts/crops/0_crop_0.png"], ["posts/crops/1_crop_0.png"], None]
    # The output is a posts file again: `mmib predict` / `mmib explain` read it, crops and all.
    posts = read_posts(out / "posts.jsonl")
    assert posts[0].words == ["RT", "@ann", ":", "Messi", "in", "Paris", "!"]
    assert posts[0].image_files == [str(tmp_path / "a.png"), str(out / "posts" / "crops" / "0_crop_0.png")]
    with Image.open(tmp_path / "a.png") as picture:
        assert posts[1].crops[0].tobytes() == picture.convert("RGB").crop(hand_box(picture.size)).tobytes()
    assert posts[2].text == "just a string, no image" and posts[2].image_files == [None]


@pytest.mark.slow
def test_resumes_after_a_kill(detr_dir, tmp_path, capsys):
    data_dir = twitter_folder(tmp_path)
    out = tmp_path / "crops"
    # The detector process is killed in its third detector call (batch size 1): two posts are done.
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from mmib import object_extraction_mmib
        from mmib.cli import main
        original, calls = object_extraction_mmib.MMIBObjectExtractor._detect, [0]
        def killed(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)
        object_extraction_mmib.MMIBObjectExtractor._detect = killed
        main(["extract-objects", {str(data_dir)!r}, "--detector", {detr_dir!r}, "--output_dir", {str(out)!r},
              "--batch_size", "1", "--quiet"])
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    done = sorted(path.relative_to(out / ".records").as_posix() for path in (out / ".records").rglob("*.json"))
    assert len(done) == 2
    stamps = {path: (out / ".records" / path).stat().st_mtime_ns for path in done}
    assert not list(out.rglob("*.partial"))
    flags = [str(data_dir), "--detector", detr_dir, "--output_dir", str(out), "--batch_size", "1"]
    report = run_command(flags, capsys)
    assert report["resumed"] == 2 and report["detected"] == 5 and report["with_objects"] == 6
    assert {path: (out / ".records" / path).stat().st_mtime_ns for path in done} == stamps


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(detr_dir, tmp_path):
    data_dir = twitter_folder(tmp_path)
    out = tmp_path / "crops"
    command = accelerate_cpu_launcher(2) + [
        "-m", "mmib.cli", "extract-objects", str(data_dir), "--detector", detr_dir, "--output_dir", str(out), "--quiet"
    ]  # fmt: skip
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout[process.stdout.index("{") :])
    assert (report["posts"], report["detected"], report["with_objects"], report["unreadable"]) == (8, 7, 6, 1)
    assert process.stdout.count('"posts"') == 1  # only the main process reports
    assert process.stderr.count("Object extraction with") == 2  # both processes detected
    data = load_twitter_ner(data_dir, crop_dir=out)
    assert sum(len(crops) for split in data.values() for crops in split["crops"]) == 6


def test_mnre_folder_then_the_reader_reads_the_crops(detr_dir, tmp_path, capsys):
    data_dir = tmp_path / "mnre"
    (data_dir / "txt").mkdir(parents=True)
    (data_dir / "ours_rel2id.json").write_text(json.dumps({"None": 0, "/per/org/member_of": 1}))
    for split, folder in (("train", "train"), ("val", "val"), ("test", "test")):
        (data_dir / "img_org" / folder).mkdir(parents=True)
        lines = []
        for index in range(2):
            record = {"token": ["Messi", "joins", "PSG"], "h": {"pos": [0, 1]}, "t": {"pos": [2, 3]}}
            lines.append(repr({**record, "img_id": f"{split}{index}.jpg", "relation": "/per/org/member_of"}))
        (data_dir / "txt" / f"ours_{split}.txt").write_text("\n".join(lines) + "\n")
        noise_image((60, 40), seed=len(split)).save(data_dir / "img_org" / folder / f"{split}1.jpg")
    out = tmp_path / "crops"
    flags = [str(data_dir), "--detector", detr_dir, "--output_dir", str(out), "--num_crops", "3"]
    report = run_command(flags, capsys)
    assert (report["posts"], report["with_objects"], report["no_image"]) == (6, 3, 3)
    assert json.loads((out / "val_dict.json").read_text()) == {"1": ["1_crop_0.png"]}
    data = load_mnre(data_dir, crop_dir=out)
    assert data["validation"]["crops"] == [[], [str(out / "val" / "crops" / "1_crop_0.png")]]
