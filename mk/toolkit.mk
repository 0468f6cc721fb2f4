# AWS's own serving stack (sagemaker-inference + multi-model-server), for compatibility checks
# only; the project's front end is serving/ (docs/why-not-mms.md says why).
TOOLKIT_PORT ?= 8090

.PHONY: toolkit-serve toolkit-test

toolkit-serve: install ## Serve MODEL_DIR (needs MODEL_DIR/code/inference.py) with AWS's toolkit + MMS on $(HOST):$(TOOLKIT_PORT)
	$(PY) container/sagemaker_toolkit/serve.py --model-dir $(MODEL_DIR) --host $(HOST) --port $(TOOLKIT_PORT)

toolkit-test: install ## code/inference.py under AWS's toolkit gives the same answers as our server (~1.5 min)
	VENV=$(VENV) bash .ci/toolkit.sh
