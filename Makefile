VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test benchmark venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock scripts/make_venv.sh
	bash scripts/make_venv.sh $(VENV)

# The main job: train the embedded default (BSA + GRC on generated ListOps), then evaluate its checkpoint.
demo: venv
	$(PYTHON) train.py
	$(PYTHON) eval.py

test: venv
	$(PYTHON) -m pytest -q -n auto --durations=25 tests

benchmark: venv
	$(PYTHON) benchmarks/train_step.py

clean:
	rm -rf $(VENV)
