"""Training (`python -m training train`): one module per role.

`splits` loads and holds out the parts; `step` is one optimisation step (`Trainer`); `loop` runs the
epochs with resume, checkpoints, selection, calibration and the report; `cli` maps the command line to a
`TrainConfig`.
"""

from training.train.loop import train

__all__ = ["train"]
