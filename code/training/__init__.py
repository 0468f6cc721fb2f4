"""LoRA fine-tuning of FLAN-T5 for dialogue summarization, behind code/train.py.

One module per step of a run: ``config`` (``hyperparameters``, ``sagemaker`` paths) decides
what to do, ``data`` reads and batches the dialogues, ``model`` builds the LoRA model, ``loop``
trains it (``checkpoints``, ``tracking``), ``evaluation`` scores it, ``output`` writes the model
dir the serving image loads, and ``cli`` turns the outcome into an exit status and SageMaker's
failure file. It needs torch, transformers and peft (rouge-score for ROUGE, mlflow only when
MLFLOW_TRACKING_URI is set) and never imports serving/, so it runs in stock SageMaker training
containers with ``code/`` as the source dir.
"""
