# Developer and CI entry points. `make run` and `make test` are the two commands of the README quick start.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA ?= out/puck960
DEMO_RUN ?= out/demo-run
# Good parts "from the line" for the demo's calibration: the same generator and settings, another seed, so
# parts the model never saw; 200 of them lower the threshold that 12 validation parts would force.
DEMO_LINE ?= out/puck-line

# The bundled models/demo is an ensemble of two runs of today's default training configuration (MGAG on,
# mixed depth anomalies), seeds 0 and 1, each 50 epochs of 48 parts drawn afresh each epoch from 960 good
# training parts (`synth --seed 0 --test-good 100` with `--train 960`: the same validation and test parts,
# since every part has its own seed); `training ensemble` scores the mean of their heads. At the
# line-calibrated threshold it catches 36 of 40 on its 100-good-part test split with no good part NG; seed 0
# alone caught 35, seed 1 alone 27 (docs/RESULTS.md "The bundled demo model"). Each run is trained on one
# thread, the two side by side: PyTorch's sums depend on the thread count, so on two threads the same seed
# gives a slightly different model. One epoch takes about 20 s on one core; validated every second epoch.
DEMO_EPOCHS ?= 50
DEMO_TRAIN_PARTS ?= 960
DEMO_SEEDS ?= 0 1
DEMO_TRAIN_ARGS ?= --eval-every 2 --samples-per-epoch 48

.PHONY: install run test test-fast lint format demo-model bench clean

install: $(STAMP)

# One environment with serving, training, development and cluster (Ray Serve) extras. torch==2.14.1 /
# torchvision==0.29.1 come from this machine's local disk (docs/DESIGN.md#torch-pins); nothing else leaves PyPI.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,train,dev,cluster]'
	touch $(STAMP)

run: install
	BRIDGENET_DOCS=1 $(BIN)/python -m service  # /docs is off unless asked for (docs/DEPLOYMENT.md)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The code that `lint` checks and `format` rewrites (CI runs `make lint` before `make test`: .ci/run).
CODE := service training tests benchmarks docker

lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

format: install
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

# Rebuild the bundled demo model from scratch: synthetic data → train → evaluate → export (+ a sample part).
# Deterministic for the seeds; about 30-35 minutes on a 2-core CPU (the two runs train side by side, their
# logs in $(DEMO_RUN)-seedN.log). The test split holds 100 good parts so
# that the false-reject rate at the calibrated threshold is measured on more than a handful.
demo-model: install
	$(BIN)/python -m training synth --out $(DEMO_DATA) --categories puck --seed 0 --train $(DEMO_TRAIN_PARTS) --test-good 100 --overwrite
	rm -rf $(DEMO_RUN) $(foreach s,$(DEMO_SEEDS),$(DEMO_RUN)-seed$(s))
	pids=""; for s in $(DEMO_SEEDS); do \
		OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m training train --data $(DEMO_DATA) --category puck --seed $$s --out $(DEMO_RUN)-seed$$s --epochs $(DEMO_EPOCHS) $(DEMO_TRAIN_ARGS) --no-progress > $(DEMO_RUN)-seed$$s.log 2>&1 & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || { echo "a demo training run failed: see $(DEMO_RUN)-seed*.log" >&2; exit 1; }; done
	$(BIN)/python -m training ensemble --runs $(foreach s,$(DEMO_SEEDS),$(DEMO_RUN)-seed$(s)) --out $(DEMO_RUN)
	$(BIN)/python -m training evaluate --run $(DEMO_RUN) --out $(DEMO_RUN)/eval.json
	rm -rf models/demo
	$(BIN)/python -m training export --run $(DEMO_RUN) --out models/demo --metrics $(DEMO_RUN)/eval.json
	# Version 2: the image and pixel thresholds (regions) from 200 good parts of the line. The archive of
	# version 1 (a second 10 MB ONNX) is not bundled: the manifest's history names it by sha256.
	$(BIN)/python -m training synth --out $(DEMO_LINE) --categories puck --seed 1 --train 0 --validation 200 --test-per-defect 0 --overwrite
	$(BIN)/python -m training calibrate --model models/demo --good $(DEMO_LINE)/puck/validation
	rm -rf models/demo/history
	# Its test numbers at version 2's thresholds, through the service's engine (the run's eval.md has the run's).
	$(BIN)/python -m training evaluate --model models/demo --data $(DEMO_DATA) --category puck --out $(DEMO_RUN)/eval-model.json
	cp $(DEMO_RUN)/eval-model.md models/demo/EVALUATION.md
	# Its verdicts on the test split through the service's engine, and the sample parts: the crack part with
	# the highest score among those answered NG with their top region over the crack (+ gt.png), a good part OK.
	echo >> models/demo/EVALUATION.md
	$(BIN)/python -m training.evaluation.demo_sample --model models/demo --test $(DEMO_DATA)/puck/test --copy-to models/demo/sample >> models/demo/EVALUATION.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
