"""The solver's SFT loss curve is read back from the file rank 0 appends to, one point per reported step;
a step a resumed run reported again keeps its last value (no point lost, none counted twice)."""

from __future__ import annotations

import json
from pathlib import Path

from medgr2_ray.loop.solver_sft import SFTRunResult, read_loss_history


def test_every_report_is_one_point_and_a_redone_step_keeps_its_last_value(tmp_path: Path) -> None:
    path = tmp_path / "solver_sft_losses.jsonl"
    assert read_loss_history(path) == ()  # nothing reported yet
    first = [(10, 2.0), (20, 1.5), (30, 1.25)]  # a run cut off after step 30, last checkpoint at 20
    resumed = [(30, 1.2), (40, 1.0)]  # the resumed run redoes step 30 from the checkpoint
    path.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in first + resumed) + "\n")
    history = read_loss_history(path)
    assert history == ((10, 2.0), (20, 1.5), (30, 1.2), (40, 1.0))
    assert SFTRunResult(tmp_path, 40, history).losses == (2.0, 1.5, 1.2, 1.0)
