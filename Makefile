# The README's two commands. Both create .venv when missing; re-running reinstalls nothing.
VENV ?= .venv
OUT ?= quickstart-out

.PHONY: quickstart test lint
quickstart:
	./scripts/bootstrap.sh dev
	$(VENV)/bin/pdefm quickstart --out $(OUT)

test:
	./scripts/bootstrap.sh dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest

lint:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
