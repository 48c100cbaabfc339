"""
File-scale prediction: JSON-lines posts in, JSON-lines results out, streamed in input order.

Reading, JSON parsing, word splitting, image decoding and the processor run in `DataLoader` worker processes, one
window of `sort_window` batches per worker in turn, while the main process runs the model; at most
`num_workers * 2` windows wait, so memory stays flat whatever the file size. Within a window the posts are batched in
order of their sub-word count ([`MMIBPredictor.length_order`]) and the results written back in input order: posts of
similar length pad little (Twitter-2017 test posts in batches of 32 in input order pad to 1.69x their tokens; sorted
in windows of 8 batches, to 1.10x). By default workers run only where they have cores of their own
([`default_num_workers`]); otherwise everything runs in the main process. Under `accelerate launch` (or torchrun)
every process takes every `world_size`-th batch, writes its results to a part file beside the output, and the main
process merges the parts in input order.

Input rows: see [`mmib.post_files`]; blank lines are skipped. Output rows: the predictor's results, `id` defaulting to
the 1-based line number; a row that cannot be used (malformed JSON, unreadable image, empty post, ...) gives
`{"id", "error"}` and is counted in the summary.
"""

import functools
import heapq
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from ..post_files import iter_lines, prepare_line
from ..posts_mmib import PreparedPost

if TYPE_CHECKING:
    # For the annotations only: reading post files (`mmib.data` uses them) must not import the predictor.
    from ..predictor_mmib import MMIBPredictor

__all__ = ["PredictionSummary", "StrictModeError", "default_num_workers", "predict_file"]

# A second worker only helps when one cannot keep up (image decoding); more only add memory.
MAX_DEFAULT_WORKERS = 2
# Batches whose posts are sorted by length together: more pad less, but hold more decoded images in memory.
SORT_WINDOW = 8


def default_num_workers(device: torch.device) -> int:
    """
    Data loader workers that pay for themselves: on a CPU the model's matrix products already occupy
    `torch.get_num_threads()` cores, so workers get only the cores this process may use beyond those
    (`os.sched_getaffinity`), at most `MAX_DEFAULT_WORKERS`; where there are none, preparing a batch in the main
    process is cheaper than a worker competing with the model's threads and pickling every batch across. On an
    accelerator the CPU cores are free for workers.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    spare = cores if device.type != "cpu" else cores - torch.get_num_threads()
    return max(0, min(MAX_DEFAULT_WORKERS, spare))


class StrictModeError(RuntimeError):
    """Raised by `predict_file(strict=True)` at the first row that gives an error."""


@dataclass
class PredictionSummary:
    """Counts of one run: `posts` rows written, `errors` by kind (`malformed JSON`, `image`, `empty post`, ...),
    and the number of `processes` that shared the input."""

    posts: int = 0
    errors: Counter = field(default_factory=Counter)
    processes: int = 1

    def __str__(self) -> str:
        errors = sum(self.errors.values())
        kinds = ", ".join(f"{count} {kind}" for kind, count in self.errors.most_common())
        text = f"{self.posts} posts, {self.posts - errors} predicted, {errors} errors"
        text += f" ({kinds})" if kinds else ""
        return text + (f" on {self.processes} processes" if self.processes > 1 else "")


class _PostWindows(IterableDataset):
    """
    Windows of `sort_window` batches of prepared posts from a JSON-lines file, window k to worker k % num_workers:
    `(line_numbers, posts, batches)` in input order, `batches` a list of `(indexes into posts, encoded inputs)`
    that takes the posts in order of length.
    """

    def __init__(
        self,
        path: str,
        predictor: "MMIBPredictor",
        batch_size: int,
        sort_window: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.path, self.predictor, self.batch_size, self.sort_window = path, predictor, batch_size, sort_window
        self.rank, self.world_size = rank, world_size
        self.base_dir = None if path == "-" else str(Path(path).resolve().parent)

    def __iter__(self) -> Iterator[tuple[list[int], list[PreparedPost], list]]:
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        window = []
        window_index = 0
        for item in iter_lines(self.path):
            window.append(item)
            if len(window) == self.batch_size * self.sort_window:
                yield from self._emit(window, window_index, workers, worker_id)
                window, window_index = [], window_index + 1
        if window:
            yield from self._emit(window, window_index, workers, worker_id)

    def _emit(self, window, window_index, workers, worker_id):
        if window_index % self.world_size != self.rank or (window_index // self.world_size) % workers != worker_id:
            return
        prepare = functools.partial(self.predictor.prepare, base_dir=self.base_dir)
        posts = []
        for line_number, line in window:
            post = prepare_line(line_number, line, prepare)
            if post.error is not None:
                post.error = f"line {line_number}: {post.error}"
            posts.append(post)
        order = self.predictor.length_order(posts)
        batches = []
        for start in range(0, len(order), self.batch_size):
            indexes = order[start : start + self.batch_size]
            batches.append((indexes, self.predictor.encode_batch([posts[index] for index in indexes])))
        yield [line_number for line_number, _ in window], posts, batches


def _as_is(batch):
    """The batches are made by the dataset itself."""
    return batch


def _distributed(device: torch.device) -> tuple[int, int, object]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState

    # Without `cpu=True` accelerate sees no GPU and runs every launched process alone on the whole input.
    state = PartialState(cpu=device.type == "cpu")
    return state.process_index, state.num_processes, state


def predict_file(
    predictor: "MMIBPredictor",
    input_path: str,
    output_path: str,
    batch_size: int = 32,
    num_workers: int | None = None,
    quiet: bool = False,
    strict: bool = False,
    sort_window: int = SORT_WINDOW,
) -> PredictionSummary:
    """
    Predicts every post of a JSON-lines file (`-` = stdin) into a JSON-lines file (`-` = stdout).

    Args:
        predictor ([`MMIBPredictor`]): the models.
        input_path, output_path (`str`): files, or `-`.
        batch_size (`int`): posts per forward pass.
        num_workers (`int`, *optional*): data loader worker processes (0: everything in this process; stdin always
            uses 0); defaults to [`default_num_workers`].
        quiet (`bool`): no progress bar.
        strict (`bool`): stop with [`StrictModeError`] at the first row that gives an error (after writing it; with
            several processes, the process that meets it exits non-zero and the launcher stops the others).
        sort_window (`int`): batches whose posts are batched in order of length (1: batches in input order).

    Returns:
        [`PredictionSummary`] (complete on the main process).
    """
    rank, world_size, state = _distributed(predictor.device)
    if world_size > 1 and output_path == "-":
        raise ValueError("Several processes need --output FILE (their parts are merged beside it), not stdout.")
    if num_workers is None:
        num_workers = default_num_workers(predictor.device)
    if input_path == "-":
        num_workers = 0
    dataset = _PostWindows(input_path, predictor, batch_size, sort_window, rank, world_size)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_is,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )
    part_path = output_path if world_size == 1 else f"{output_path}.part{rank}"
    summary = PredictionSummary()
    progress = tqdm(unit=" posts", disable=quiet or rank != 0, file=sys.stderr, dynamic_ncols=True)
    with ExitStack() as stack:
        output = sys.stdout if part_path == "-" else stack.enter_context(open(part_path, "w", encoding="utf-8"))
        for line_numbers, posts, batches in loader:
            rows = [None] * len(posts)
            for indexes, inputs in batches:
                batch_rows = predictor.predict_prepared([posts[index] for index in indexes], inputs)
                for index, row in zip(indexes, batch_rows):
                    rows[index] = row
            _write_batch(output, line_numbers, posts, rows, world_size > 1, summary, strict)
            progress.update(len(posts))
    progress.close()
    if world_size > 1:
        state.wait_for_everyone()
        if rank == 0:
            summary = _merge_parts(output_path, world_size)
        state.wait_for_everyone()
    return summary


def _write_batch(output, line_numbers, posts, rows, as_part: bool, summary: PredictionSummary, strict: bool) -> None:
    """Writes a window's rows (in input order) with one `write` (a part file's lines carry the line number and error
    kind for the merge); under `strict`, only the rows up to the first error, then raises [`StrictModeError`]."""
    lines = []
    for line_number, post, row in zip(line_numbers, posts, rows):
        text = json.dumps(row, ensure_ascii=False)
        lines.append(f"{line_number}\t{post.error_kind or ''}\t{text}\n" if as_part else text + "\n")
        summary.posts += 1
        if post.error is not None:
            summary.errors[post.error_kind] += 1
            if strict:
                output.write("".join(lines))
                output.flush()
                raise StrictModeError(f"--strict: {post.error}")
    output.write("".join(lines))


def _merge_parts(output_path: str, world_size: int) -> PredictionSummary:
    """Merges the processes' part files (each in input order) into `output_path` and deletes them."""
    summary = PredictionSummary(processes=world_size)
    parts = [f"{output_path}.part{rank}" for rank in range(world_size)]
    with ExitStack() as stack:
        readers = [stack.enter_context(open(part, encoding="utf-8")) for part in parts]
        keyed = [((int(line.split("\t", 1)[0]), line) for line in reader) for reader in readers]
        with open(output_path, "w", encoding="utf-8") as output:
            for _, line in heapq.merge(*keyed):
                _, kind, text = line.split("\t", 2)
                output.write(text)
                summary.posts += 1
                if kind:
                    summary.errors[kind] += 1
    for part in parts:
        os.remove(part)
    return summary
