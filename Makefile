# The two set-up commands of the README, and the lock they install from.
#
# Everything is installed into a virtualenv, $(VENV) (created when missing), with the tested versions
# of constraints.txt. CPU torch is installed first and on its own: a bare `torch` requirement would
# make pip pull a multi-GB CUDA build.
VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
LOCK := constraints.txt
TORCH := torch==2.13.0
DEMO_DIR ?= runs/demo

.PHONY: venv install install-test install-all demo test test-all lock

venv: $(PYTHON)

$(PYTHON):
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

install: venv
	$(PIP) install -c $(LOCK) $(TORCH)
	$(PIP) install -c $(LOCK) -e .

install-test: venv
	$(PIP) install -c $(LOCK) $(TORCH)
	$(PIP) install -c $(LOCK) -e ".[test]"

# Adds Triton (about 1 GB): its kernels run here only under TRITON_INTERPRET=1, in the tests.
install-all: venv
	$(PIP) install -c $(LOCK) $(TORCH)
	$(PIP) install -c $(LOCK) -e ".[test,triton]"

demo: install
	mkdir -p $(DEMO_DIR)
	$(VENV)/bin/difftrack synth $(DEMO_DIR)/demo.mp4 --photo --speed 0.6 --seed 400 --frames 24 --size 256
	$(VENV)/bin/difftrack track $(DEMO_DIR)/demo.mp4 --gt $(DEMO_DIR)/demo_gt.npz --out $(DEMO_DIR)/demo_tracks

test: install-test
	$(PYTHON) -m pytest -q

test-all: install-all
	$(PYTHON) -m pytest -q

# Re-resolve every dependency to its newest compatible release in a throw-away virtualenv, run the whole
# suite there (Triton included), and write the lock only when it passes.
lock:
	rm -rf .lock-venv
	$(BOOTSTRAP_PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install $(TORCH)
	.lock-venv/bin/python -m pip install -e ".[test,triton]"
	.lock-venv/bin/python -m pytest -q
	.lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv
	@echo "wrote $(LOCK); commit it"
