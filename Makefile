# Two commands on a fresh machine (Python 3 with pip and venv, no GPU):
#   make demo   set up .venv, prepare the offline base, run the main job (GLARE on CamVid, base vs GLARE table)
#   make test   set up .venv and run every check: lint, unit tests, the book's notebooks (nbval), the book build
#   make student  the book without the exercise solutions, in _build/student-src/_build/html
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A known-good pair for CPU machines; Colab keeps its own torch (the package itself only asks for torch>=2.1).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export PYTHONUNBUFFERED := 1

.PHONY: setup chromium demo test lint format type-check unit nbval rehearsal book student pages bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e ".[test,book,offline]"
	$(BIN)/python -c "import torch, torchvision, timm; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__)"
	touch $@

demo: setup
	$(BIN)/glare demo

test: setup chromium lint unit nbval rehearsal book pages

lint: setup
	$(BIN)/ruff check glare_core tests tools
	$(BIN)/ruff format --check glare_core tests tools

format: setup
	$(BIN)/ruff check --fix glare_core tests tools
	$(BIN)/ruff format glare_core tests tools

type-check: setup
	$(BIN)/pip install -q mypy && $(BIN)/mypy glare_core

unit: setup
	$(BIN)/python -m pytest tests

nbval: setup
	GLARE_SMOKE=1 $(BIN)/python -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env \
		$$($(BIN)/python tools/book_toc.py notebooks)

# The Colab reader's path, offline: a fresh environment with only Colab's packages (torch from TORCH_SPEC, so pip
# reuses the wheels setup downloaded), chapters 0, 1, 3, 8 and 9 in smoke mode, cloning and downloading from a
# local server (tools/colab_rehearsal.py says what stands in for what).
rehearsal: setup
	$(BIN)/python tools/colab_rehearsal.py --torch-spec "$(TORCH_SPEC)"

book: setup
	$(BIN)/jupyter-book build . -W --keep-going

# The student edition: a copy of the book's sources without the exercise solutions, built like the book.
student: setup
	$(BIN)/python tools/student_edition.py --out _build/student-src
	$(BIN)/jupyter-book build _build/student-src -W --keep-going
	@echo "student edition: _build/student-src/_build/html/index.html"

# Every built page opened in headless Chromium (Debian's package): no missing figure, no raw maths, no console error.
pages: book chromium
	$(BIN)/python tools/check_pages.py --html _build/html

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing Debian's chromium for the page check"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

bench: setup
	$(BIN)/glare bench --out runs/bench.json

clean:
	rm -rf _build .pytest_cache
