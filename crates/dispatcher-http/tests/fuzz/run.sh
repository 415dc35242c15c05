#!/usr/bin/env bash
# Fuzzes a running Dispatcher HTTP API from its own OpenAPI document with schemathesis.
#
#   crates/dispatcher-http/tests/fuzz/run.sh http://127.0.0.1:8080
#
# Environment: DISPATCHER_ADMIN_TOKEN (the admin bearer token; admin routes are fuzzed with it),
# FUZZ_MAX_EXAMPLES (test cases per operation, default 60), FUZZ_SEED (reproduce a run),
# FUZZ_REPORT_DIR (where to write the JUnit report; default: none), PYTHON (default python3: schemathesis
# runs as `$PYTHON -m schemathesis.cli`, so it need not be on PATH).
# Needs schemathesis: pip install -r crates/dispatcher-http/tests/fuzz/requirements.txt
# The tests in crates/dispatcher-http/tests/http/fuzz.rs start a server and run this script.
set -euo pipefail

base="${1:?usage: run.sh BASE_URL}"
base="${base%/}"
args=(
    run "$base/openapi.json"
    --url "$base"
    # No server errors; only documented status codes, content types and response bodies; schema-invalid
    # input refused; admin operations refuse missing or wrong credentials; undocumented methods get 405.
    # (FUZZ_CHECKS=all adds positive_data_acceptance, which can flag user ids longer than 128 bytes but
    # not 128 characters, and the stateful heuristics use_after_free / ensure_resource_availability.)
    --checks "${FUZZ_CHECKS:-not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,negative_data_rejection,ignored_auth,unsupported_method}"
    --phases examples,coverage,fuzzing,stateful
    --max-examples "${FUZZ_MAX_EXAMPLES:-60}"
    --workers 2
    --request-timeout 10
    --suppress-health-check all
    # No example database or cache in the working directory.
    --generation-database none
    --no-color
    # An endless event stream.
    --exclude-path '/v1/events/{event}/tickets/{ticket}/live'
)
if [ -n "${DISPATCHER_ADMIN_TOKEN:-}" ]; then
    args+=(--header "Authorization: Bearer ${DISPATCHER_ADMIN_TOKEN}")
fi
if [ -n "${FUZZ_SEED:-}" ]; then
    args+=(--seed "$FUZZ_SEED")
fi
if [ -n "${FUZZ_REPORT_DIR:-}" ]; then
    args+=(--report junit --report-dir "$FUZZ_REPORT_DIR")
fi
exec "${PYTHON:-python3}" -m schemathesis.cli "${args[@]}"
