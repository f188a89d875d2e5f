# The two commands a new user needs: `make run` and `make test`.
.PHONY: run test fuzz lint deps dev-deps bench clean

run: deps            ## install what is missing, start the server on the embedded default
	scripts/run-dev.sh

test: dev-deps lint  ## lint, type-check and run the test suite
	.venv/bin/python -m pytest -q

fuzz: dev-deps      ## the API fuzzed from its OpenAPI document, 1000 examples per operation (make test runs 50)
	REMOTE_CI_FUZZ_EXAMPLES=$${REMOTE_CI_FUZZ_EXAMPLES:-1000} .venv/bin/python -m pytest -q tests/web/test_fuzz.py

lint: dev-deps
	.venv/bin/ruff check .
	.venv/bin/mypy

deps:
	scripts/install-deps.sh requirements.txt

dev-deps:
	scripts/install-deps.sh requirements-dev.txt

bench: deps
	.venv/bin/python bench/run.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
