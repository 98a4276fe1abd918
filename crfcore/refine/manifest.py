"""What produced each output of a refine run: ``OUT/.crfcore-refine.jsonl``, one line per finished file.

A rerun counts a file as done only when its outputs exist with the sizes recorded for them, and they were made
from the same inputs (size and modification time) with the same options (CRF parameters, score handling, tiling).
Otherwise the file is refined again: a rerun with other parameters redoes everything, an output truncated or
replaced by something else (a zero-byte file, a file of another tool) is never taken for done.
"""

import json
import os

from .._version import __version__
from .imageio import WriteError

NAME = ".crfcore-refine.jsonl"


def _stat(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def options_key(options):
    """The options that decide the outputs' values, as a canonical JSON string."""
    kept = {k: v for k, v in options.items() if k not in ("workers", "n_labels_from")}
    return json.dumps(kept, sort_keys=True, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))


def record(job, labels_path, probs_path):
    """The manifest line for a job whose outputs were just written."""
    return {"stem": os.path.splitext(os.path.basename(labels_path))[0], "options": options_key(job.options),
            "image": _stat(job.image), "scores": _stat(job.scores), "labels": _size(labels_path),
            "probs": None if probs_path is None else _size(probs_path), "crfcore": __version__}


class Manifest:
    """The records of one output folder (the last line per stem wins), appended as files finish."""

    def __init__(self, out):
        self.path = os.path.join(out, NAME)
        self.entries = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        self.entries[entry["stem"]] = entry
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a killed run
        except OSError:
            pass

    def is_done(self, job, labels_path, probs_path):
        entry = self.entries.get(os.path.splitext(os.path.basename(labels_path))[0])
        if entry is None:
            return False
        now = record(job, labels_path, probs_path)
        return (entry["options"] == now["options"] and entry["image"] == now["image"] and entry["scores"] ==
                now["scores"] and now["labels"] and entry["labels"] == now["labels"] and
                entry.get("probs") == now["probs"] and (probs_path is None or bool(now["probs"])))

    def add(self, job, labels_path, probs_path):
        entry = record(job, labels_path, probs_path)
        self.entries[entry["stem"]] = entry
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
        except OSError as exc:  # a full disk: the file is redone by the next run, which finds no record of it
            raise WriteError(exc.errno, f"cannot write {self.path}: {exc.strerror or exc}") from None
