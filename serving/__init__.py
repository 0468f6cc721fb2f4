"""Runtime for serving FLAN-T5 (+ LoRA) summarization on SageMaker and Kubernetes."""

__version__ = "0.1.0"
