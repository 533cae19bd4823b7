# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv if missing, install, run the example cases on the embedded default
#   make test   - create .venv if missing, install, run the test suite
PYTHON ?= python3
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev,train]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pathasst demo --out demo_out

test: $(STAMP)
	HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 ANONYMIZED_TELEMETRY=False $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo_out build dist *.egg-info
