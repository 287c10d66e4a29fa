"""Checkpoints that are complete or ignored: a marker written last, once every file of every process is there, so that
a run killed while saving resumes from the checkpoint before."""

from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


#: Written last into a checkpoint folder, once every file of every process is there (`PROTrainer._save_checkpoint`).
CHECKPOINT_COMPLETE = "checkpoint_complete.json"


#: PROTrainer's own resumable state (token count, metric sums since the last log).
RANKING_STATE_NAME = "ranking_trainer_state.json"


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The `checkpoint-N` folder of `folder` with the highest N that is complete (has `CHECKPOINT_COMPLETE`), or None.
    Partial checkpoints (a run killed while saving) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = {}
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1 :]
        if suffix.isdigit() and (path / CHECKPOINT_COMPLETE).is_file():
            steps[int(suffix)] = path
    return str(steps[max(steps)]) if steps else None
