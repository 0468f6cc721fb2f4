"""LoRA fine-tuning of a FLAN-T5 model for dialogue summarization, with SageMaker's training contract.

Run as ``docker run IMAGE train`` (SageMaker), ``train ...`` on a host (console script), or
``python code/train.py ...``. This entry script is all SageMaker needs to name; the work is in
the ``training`` package beside it (code/training/), which needs torch, transformers and peft
(rouge-score for ROUGE, mlflow only when MLFLOW_TRACKING_URI is set) and nothing of serving/, so
it also runs as the entry point of a stock SageMaker PyTorch/Hugging Face training container
with ``code/`` as the source dir.

Contract (see docs/training.md):
- data: JSON lines with ``dialogue`` and ``summary`` in the ``train`` and (optional)
  ``validation`` channels, /opt/ml/input/data/<channel> (``SM_CHANNEL_TRAIN``...), or
  ``--train-file`` / ``--validation-file``;
- hyperparameters: /opt/ml/input/config/hyperparameters.json (string values, as SageMaker writes
  them), then command-line flags (``--learning-rate 3e-4`` or ``--learning_rate 3e-4``);
- output: the adapter, tokenizer and ``code/inference.py`` in SM_MODEL_DIR (/opt/ml/model), a
  layout the serving image loads as is; metrics in SM_OUTPUT_DATA_DIR; checkpoints in
  /opt/ml/checkpoints (resumed on restart); on failure the reason in /opt/ml/output/failure and
  a non-zero exit status.

Metric lines look like ``train_loss=1.2345;`` so SageMaker metric_definitions regexes match them.
"""

import sys
from pathlib import Path

# The training package sits beside this script. `python code/train.py` finds it anyway; runpy
# (the `train` console script) and SageMaker's launchers may not put this directory on the path.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
