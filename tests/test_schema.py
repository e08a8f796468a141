"""schemathesis against ``/openapi.json`` of a real server on 127.0.0.1: every operation,
a bounded number of generated requests each (schema-valid and schema-violating ones),
and for each answer: never a 5xx, a status the OpenAPI document lists for the
operation, and the declared content type.

The operations are driven one by one with each one's Hypothesis strategy (not
schemathesis' pytest plugin, which does not load under pytest 9), so one test
covers the whole schema and names every failing operation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    status_code_conformance,
)

from tests.support.servers import uvicorn_thread
from tokenwire import Settings, create_app
from tokenwire.settings import PusherApp

EXAMPLES = 25
"""Generated requests per operation and generation mode."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module", params=["open", "identity required"])
def api_schema(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.BaseSchema]:
    """A server without identity, and one whose callers (schemathesis sends no token)
    all get 401 where identity is needed."""
    tokens = {"token-alice": "alice"} if request.param == "identity required" else {}
    app = create_app(
        Settings(
            fake_provider=True,
            auth_tokens=tokens,
            data_dir=tmp_path_factory.mktemp("schema"),
            default_model="fake:echo",
            models=["fake:echo"],
            pusher_apps=[PusherApp(id="1", key="key", secret="secret")],
            coalesce_ms=0,
            heartbeat_interval=0.5,
        )
    )
    with uvicorn_thread(app) as base:
        yield schemathesis.openapi.from_url(base + "/openapi.json")


# schemathesis draws from the global ``random`` inside its strategies (its
# ``specs/openapi/_hypothesis.py`` header choice); Hypothesis warns on the first such
# draw only, which under ``filterwarnings = error`` was a failure on the first call and
# a pass on the replay ("unreliable results"). The warning is about schemathesis'
# code, not ours.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_every_operation_answers_no_5xx_and_only_documented_statuses(
    api_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode
) -> None:
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=30)

        try:
            run()
        except Unsatisfiable:  # negative mode: nothing of this operation can be invalid
            assert mode is schemathesis.GenerationMode.NEGATIVE
        except (Exception, BaseExceptionGroup) as exc:  # every failing operation, then fail
            failures[operation.label] = _describe(exc)[:2000]
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def _describe(exc: BaseException) -> str:
    """The failure's text with its sub-exceptions' (Hypothesis reports a flaky
    failure as a group whose own text names none of them)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join([str(exc), *(_describe(sub) for sub in exc.exceptions)])
    return f"{type(exc).__name__}: {exc}"
