"""The per-face loop every stage script shares: choose ids, skip finished faces, isolate failures.

A stage script reads like::

    opt = parse_options("gen_maps")
    folder = DataFolder(opt.dataroot)
    start_stage(opt, folder.options_file("gen_maps"))
    ids = select_face_ids(folder, opt)
    summary = run_faces(ids, process_one, done=lambda fid: folder.fit_mesh(fid).exists(),
                        overwrite=opt.overwrite, desc="gen_maps")
    sys.exit(summary.exit_code())

A face whose processing raises one of :data:`FACE_ERRORS` (bad input: missing file, bad camera,
no face found, ...) is reported and skipped; the other faces go on; the exit status is non-zero.
Programming errors (anything else) still stop the stage with a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Callable, Iterable

from tqdm import tqdm

from mvfr.atomic_io import save_json
from mvfr.datafolder import DataError, DataFolder, face_id, parse_face_id

log = logging.getLogger(__name__)

SUMMARY_FILE_ENV = "MVFR_SUMMARY_FILE"
FACE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)
# CameraError and DataError are ValueErrors; a stage may pass a wider tuple to run_faces.


@dataclasses.dataclass
class StageSummary:
    stage: str
    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def save(self, path: str | os.PathLike) -> None:
        save_json(path, dataclasses.asdict(self))

    def report(self) -> str:
        lines = [f"{self.stage}: {len(self.done)} done, {len(self.skipped)} skipped (outputs exist), {len(self.failed)} failed"]
        lines += [f"  FAILED {fid}: {why}" for fid, why in self.failed.items()]
        return "\n".join(lines)


def shard(ids: list[str]) -> list[str]:
    """The ids of this process under torchrun (``RANK``/``WORLD_SIZE``); all of them otherwise."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return ids[rank::world]


def expand_ids(patterns, folder) -> list[str]:
    """``--ids`` entries -> face ids: a plain id (``7_3``, ``007_03``) as it is, normalised; an entry with
    shell wildcards (``'01?_*'``: persons 010-019; quote it in the shell) -> every id of ``folder``'s
    id.json (train, then eval) it matches, in that order. A pattern that matches nothing is an error."""
    import fnmatch

    out: list[str] = []
    known: list[str] | None = None
    for entry in patterns:
        if not any(c in entry for c in "*?["):
            out.append(face_id(*parse_face_id(entry)))
            continue
        if known is None:
            known = []
            for split in ("train", "eval"):
                try:
                    known += folder.face_ids(split)
                except DataError:
                    pass
        hits = [f for f in known if fnmatch.fnmatchcase(f, entry)]
        if not hits:
            raise DataError(f"--ids pattern {entry!r} matches no face id of {folder.id_json}")
        out += hits
    return list(dict.fromkeys(out))


def select_face_ids(folder: DataFolder, opt, sharded: bool = True) -> list[str]:
    """``--ids`` when given (ids or shell-style patterns, :func:`expand_ids`), else every id of
    ``--split`` in ``id.json``; sharded by rank under torchrun."""
    if opt.ids:
        ids = expand_ids(opt.ids, folder)
    else:
        ids = folder.face_ids(opt.split)
    if not ids:
        raise DataError(f"no face ids to process for split {opt.split!r} in {folder.id_json}")
    return shard(ids) if sharded else ids


def run_faces(
    ids: Iterable[str],
    process: Callable[[str], object],
    done: Callable[[str], bool] | None = None,
    overwrite: bool = False,
    desc: str = "faces",
    errors: tuple[type[BaseException], ...] = FACE_ERRORS,
) -> StageSummary:
    """Call ``process(fid)`` for every id with a progress bar; see the module docstring."""
    summary = StageSummary(desc)
    ids = list(ids)
    bar = tqdm(ids, desc=desc, unit="face", dynamic_ncols=True, file=sys.stderr)
    for fid in bar:
        bar.set_postfix_str(fid)
        if done is not None and not overwrite and done(fid):
            summary.skipped.append(fid)
            continue
        try:
            process(fid)
        except errors as exc:
            summary.failed[fid] = str(exc)
            log.error("%s: face %s failed: %s", desc, fid, exc)
            continue
        summary.done.append(fid)
    bar.close()
    print(summary.report(), file=sys.stderr)
    if os.environ.get(SUMMARY_FILE_ENV):  # set by run_pipeline.py to collect every stage's summary
        summary.save(os.environ[SUMMARY_FILE_ENV])
    return summary
