# The two set-up commands of the README. CPU torch is installed first and on its own: a bare `torch`
# requirement would make pip pull a multi-GB CUDA build.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
DEMO_DIR ?= runs/demo

.PHONY: install install-test demo test

install:
	$(PIP) install torch==2.13.0
	$(PIP) install -e .

install-test:
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"

demo: install
	mkdir -p $(DEMO_DIR)
	difftrack synth $(DEMO_DIR)/demo.mp4 --photo --speed 0.6 --seed 400 --frames 24 --size 256
	difftrack track $(DEMO_DIR)/demo.mp4 --grid 10 --out $(DEMO_DIR)/demo_tracks

test: install-test
	$(PYTHON) -m pytest -q
