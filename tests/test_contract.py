"""The server keeps its OpenAPI contract (issue 20). Schemathesis generates requests from the server's own
document, schema-valid ones and schema-violating ones, and sends them with an API key to the real server
over a socket: over a thousand cases across every operation. No response may be a 5xx; each response's
status, content type and body must be the ones the document declares; every schema-violating request must
be refused with a 4xx, and every schema-valid one served, except for the refusals no JSON schema can state
(``BEYOND_THE_SCHEMA``, each known by its error code).

What it found: lone surrogates ("\\ud800") in any string were a 500 on every route (the tokenizer, or the JSON
encoding of a response or an error that quoted them); an empty prompt, an empty stop string or more than 16
of them, and ``"stream": 0``, were 500s on /v1/*; true, 0 and "2" were taken for 1, false and 2; the fields
the OpenAI routes refuse with a 400 were undocumented; an OpenRLHF prompt "" was a 500; ``"beta": 1e308``
answered 200 with a null reward; 403 and 404 were undocumented, and a 405's Allow header left out POST
/admin/models. ``test_what_the_contract_found_stays_fixed`` pins each of them.

Lean: the tiny Llama pair, a fixed seed and ``derandomize`` (the same cases on every run), and sampling kept
to a few tokens and rows (``cheap``) where the server would otherwise decode hundreds of tokens a case.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, Response
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from serving import running_server

KEY = "sk-contract-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Sampling costs a forward per token and row, so the server takes few samples (prompts x n) per request (more
# are a 413, before any sampling) and gives /v1/* requests without max_tokens few tokens.
SERVER = {"max_items_per_request": 4, "default_max_tokens": 4}
FEW_TOKENS = 4
FEW_ROWS = 2
CONTEXT = 1024  # the tiny models' (max_position_embeddings)
EXAMPLES_PER_OPERATION = 100  # generated ones; the coverage phase adds its own boundary cases
MIN_CASES = 1000

# Refusals of schema-valid requests for what no JSON schema can state, as (status, code, location), None
# for any location: token counts against the model's context, the server's item limit, what the model's chat
# template can render, OpenRLHF's pairing of each query with its prompt, max_tokens agreeing with
# max_completion_tokens, and one seed per prompt.
BEYOND_THE_SCHEMA: set[tuple[int, str, str | None]] = {
    (413, "too_long", None),
    (400, "too_long", "max_tokens"),
    (413, "too_many_items", None),
    (422, "bad_prompt", None),
    (422, "empty_prompt", None),
    (422, "not_prefix_stable", None),
    (422, "query_mismatch", None),
    (400, "unsupported", "max_completion_tokens"),
    (422, "seeds_mismatch", "seeds"),
}


CASES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module")
def server(llama_pair, tmp_path_factory):  # type: ignore[no-untyped-def]
    logs = tmp_path_factory.mktemp("logs")
    with running_server(llama_pair, logs, api_keys={KEY: "contract"}, **SERVER) as url:
        yield url


@pytest.fixture(scope="module")
def contract(server: str) -> Any:
    """The document the server serves, with the server as the base URL. The config is explicit, so that no
    schemathesis.toml changes what runs."""
    config = schemathesis.Config.from_dict({"seed": 0})
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", config=config, headers=AUTH, timeout=30)
    schema.config.update(base_url=server)
    return schema


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # Schemathesis 4.32's lazy schema reads pytest's private Node._nodeid, which pytest 9 no longer has.
    request.node._nodeid = request.node.nodeid


@schemathesis.check
def schema_valid_request_served(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Schemathesis' positive_data_acceptance, less the refusals in BEYOND_THE_SCHEMA."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if not beyond_the_schema(response):
            raise
        return None


def beyond_the_schema(response: Response) -> bool:
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    status, code = response.status_code, error.get("code")
    return {(status, code, None), (status, code, error.get("location"))} & BEYOND_THE_SCHEMA != set()


def cheap(case: Case) -> None:
    """A max_tokens or n that the server would sample is cut to a few, and /generate and /best-of-n get a
    max_tokens where the request has none (their default is 256 tokens). Values the server refuses before
    sampling (beyond the context, more samples than it takes) stay as drawn, and so does anything of the
    wrong type or out of range: a schema-violating case stays one."""
    if not isinstance(case.body, dict):
        return
    if case.operation.path in ("/generate", "/best-of-n"):
        case.body.setdefault("max_tokens", FEW_TOKENS)
    for name, few, top in [
        ("max_tokens", FEW_TOKENS, CONTEXT),
        ("max_completion_tokens", FEW_TOKENS, CONTEXT),
        ("n", FEW_ROWS, SERVER["max_items_per_request"]),
    ]:
        value = case.body.get(name)
        if type(value) is int and few < value <= top:
            case.body[name] = few


schema = schemathesis.pytest.from_fixture("contract")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_contract(case: Case) -> None:
    CASES[case.operation.label] += 1
    cheap(case)
    case.call_and_validate(
        headers=AUTH,
        timeout=60,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[schema_valid_request_served],
    )


def test_the_contract_ran_on_every_operation(contract: Any) -> None:
    if not CASES:
        pytest.skip("counts test_contract's cases: run it first")
    operations = {result.ok().label for result in contract.get_all_operations()}
    assert operations == set(CASES), f"not run: {operations - set(CASES)}"
    assert sum(CASES.values()) >= MIN_CASES, dict(CASES)


LONE = "\ud800"


def post_json(url: str, body: Any) -> httpx.Response:
    """``body`` as JSON with its escapes as written: lone surrogates too, which httpx's encoder refuses."""
    content = json.dumps(body).encode()
    return httpx.post(url, content=content, headers={**AUTH, "Content-Type": "application/json"}, timeout=60)


@pytest.mark.parametrize(
    ("path", "body", "status", "named"),
    [
        ("/reward", {"items": [{"prompt": LONE, "response": "a"}]}, 422, "items[0].prompt"),
        ("/reward", {"items": [{"id": LONE, "prompt": "a", "response": "b"}]}, 422, "items[0].id"),
        ("/generate", {"prompts": ["a"], "stop": [LONE]}, 422, "stop[0]"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], LONE: 1},
            422,
            "field name",
        ),
        ("/openrlhf/reward", {"query": [f"a{LONE}"], "prompts": ["a"]}, 422, "query[0]"),
        ("/v1/completions", {"prompt": ""}, 422, "prompt"),
        ("/v1/completions", {"prompt": "a", "stop": [""]}, 422, "stop"),
        ("/v1/completions", {"prompt": "a", "stop": ["x"] * 17}, 422, "stop"),
        ("/generate", {"prompts": ["a"], "stop": ["x" * 100_000]}, 422, "stop[0]"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], "stream": 0},
            422,
            "stream",
        ),
        ("/generate", {"prompts": ["a"], "n": True}, 422, "n"),
        ("/generate", {"prompts": ["a"], "max_tokens": "2"}, 422, "max_tokens"),
        ("/reward", {"items": [{"prompt": "a", "response": "b"}], "truncate": 0}, 422, "truncate"),
        ("/openrlhf/reward", {"query": ["a"], "prompts": [""]}, 422, "prompts[0]"),
        ("/reward", {"items": [{"prompt": "a", "response": "b"}], "beta": 1e308}, 422, "beta"),
        ("/generate", {"prompts": ["a"], "max_tokens": 100_000}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "presence_penalty": False}, 400, "presence_penalty"),
        ("/reward", {"model": "nobody", "items": [{"prompt": "a", "response": "b"}]}, 404, "nobody"),
    ],
    ids=[
        "surrogate-text",
        "surrogate-id",
        "surrogate-stop",
        "surrogate-field-name",
        "surrogate-openrlhf",
        "empty-prompt",
        "empty-stop",
        "17-stops",
        "long-stop",
        "stream-0",
        "n-true",
        "max-tokens-string",
        "truncate-0",
        "openrlhf-empty-prompt",
        "beta-overflows",
        "max-tokens-beyond-context",
        "false-is-not-0",
        "unknown-model",
    ],
)
def test_what_the_contract_found_stays_fixed(
    server: str, path: str, body: dict[str, Any], status: int, named: str
) -> None:
    """Each was a 500, or a 200 it should not have been, before the contract held."""
    answer = post_json(f"{server}{path}", body)
    assert answer.status_code == status, answer.text
    assert named in answer.json()["error"]["message"] + str(answer.json()["error"]["location"])


def test_a_tiny_temperature_samples_greedily(server: str) -> None:
    """logits / 1e-300 overflow, and the softmax has no distribution left: such a temperature is greedy."""
    tiny = post_json(f"{server}/generate", {"prompts": ["0"], "max_tokens": 4, "temperature": 1e-300})
    greedy = post_json(f"{server}/generate", {"prompts": ["0"], "max_tokens": 4, "temperature": 0})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["results"] == greedy.json()["results"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompts": ["a", "b"], "seeds": [1]}, "1 entries for 2 prompts"),
        ({"prompts": ["a"], "seeds": [1], "seed": 2}, "not both"),
    ],
)
def test_seeds_must_give_one_seed_per_prompt(server: str, body: dict[str, Any], says: str) -> None:
    answer = post_json(f"{server}/generate", {**body, "max_tokens": 2})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "seeds_mismatch" and error["location"] == "seeds" and says in error["message"]


def test_a_default_max_tokens_is_cut_to_fit(server: str) -> None:
    """Only a max_tokens the request sets is refused when it does not fit: the default is cut to the room
    the prompt leaves (the server's default_max_tokens on /v1/*)."""
    answer = post_json(f"{server}/v1/completions", {"prompt": "a", "temperature": 0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] <= SERVER["default_max_tokens"]


def test_every_error_status_is_documented_with_the_envelope(contract: Any) -> None:
    responses = contract.raw_schema["paths"]["/reward"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "422", "429", "503", "504"} <= set(responses)
    assert responses["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }


def test_a_405_names_every_method_of_the_path(server: str) -> None:
    answer = httpx.request("OPTIONS", f"{server}/admin/models", headers=AUTH, timeout=10)
    assert answer.status_code == 405 and answer.headers["allow"] == "GET, POST"
