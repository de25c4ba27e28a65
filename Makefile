VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock scripts/make_venv.sh
	bash scripts/make_venv.sh $(VENV)

test: venv
	$(PYTHON) -m pytest -q -n auto tests

clean:
	rm -rf $(VENV)
