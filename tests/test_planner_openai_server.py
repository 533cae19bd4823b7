"""The ``openai`` planner's transport against a local stand-in of an OpenAI-compatible server (vLLM / llama.cpp):
retries on 5xx and 429, the per-request timeout, and the cap on concurrent requests, through the real ``openai``
client over real HTTP on loopback. (The planner against llama-cpp-python's real server: test_planner_llamacpp.py.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_standin import ChatStandIn

from pathasst.planning.base import PlannerContext, PlannerError
from pathasst.planning.openai_backend import OpenAIPlanner
from pathasst.tools.registry import default_registry

CATALOGUE = default_registry().catalogue()  # the installed tools, as planners see them


def _completion(tool: str, image: str) -> dict:
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 0,
        "model": "pathasst",
        "choices": [{
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": tool, "arguments": json.dumps({"image": image})},
            }]},
        }],
    }


class StandIn(ChatStandIn):
    """Answers ``POST /v1/chat/completions``: ``fail_first`` errors (status ``fail_status``) first, each request
    takes ``delay`` seconds; counts requests and the most that were in flight at once."""

    def __init__(self) -> None:
        self.fail_first = 0
        self.fail_status = 503
        self.delay = 0.0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        super().__init__(self._answer)

    def _answer(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        with self.lock:
            self.requests += 1
            n = self.requests
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if n <= self.fail_first:
                error = {"error": {"message": "server busy", "type": "overloaded"}}
                return self.fail_status, error, {"Retry-After": "0"} if self.fail_status == 429 else {}
            return 200, _completion("nuclei_segmentation", "a.png"), {}
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture()
def standin() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


def _planner(url: str, **kw) -> OpenAIPlanner:
    from pathasst.core.settings import Settings

    return OpenAIPlanner(Settings(_env_file=None, cache_dir=Path("/nonexistent"), openai_base_url=url, **kw))


def _ctx() -> PlannerContext:
    return PlannerContext(question="Count the nuclei.", stain="H&E", images=["a.png"], catalogue=CATALOGUE)


@pytest.mark.parametrize("status", [503, 429, 500])
def test_transient_errors_are_retried_then_succeed(standin: StandIn, status: int) -> None:
    standin.fail_first, standin.fail_status = 2, status
    decision = _planner(standin.url, openai_max_retries=2, openai_timeout_s=10).plan(_ctx())
    assert [(c.tool, c.arguments) for c in decision.calls] == [("nuclei_segmentation", {"image": "a.png"})]
    assert standin.requests == 3  # two failures, then the answer
    assert standin.bodies[0]["model"] == "pathasst" and standin.bodies[0]["max_tokens"] == 256


def test_retries_exhausted_is_a_clear_error(standin: StandIn) -> None:
    standin.fail_first = 10
    with pytest.raises(PlannerError, match=rf"openai planner: {standin.url} answered HTTP 503: .*server busy"):
        _planner(standin.url, openai_max_retries=1, openai_timeout_s=10).plan(_ctx())
    assert standin.requests == 2  # the first try and one retry, no more


def test_client_errors_are_not_retried(standin: StandIn) -> None:
    standin.fail_first, standin.fail_status = 10, 400
    with pytest.raises(PlannerError, match="answered HTTP 400"):
        _planner(standin.url, openai_max_retries=3, openai_timeout_s=10).plan(_ctx())
    assert standin.requests == 1


def test_timeout_per_request(standin: StandIn) -> None:
    standin.delay = 3.0
    t0 = time.monotonic()
    with pytest.raises(PlannerError, match=rf"request to {standin.url} timed out after 0.5 s"):
        _planner(standin.url, openai_max_retries=0, openai_timeout_s=0.5).plan(_ctx())
    assert time.monotonic() - t0 < 2.5


def test_concurrency_is_capped_per_endpoint_across_threads(standin: StandIn) -> None:
    standin.delay = 0.3
    planners = [_planner(standin.url, openai_max_concurrency=2, openai_timeout_s=30) for _ in range(6)]
    results: list[object] = []
    threads = [threading.Thread(target=lambda p=p: results.append(p.plan(_ctx()))) for p in planners]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert len(results) == 6 and all(r.calls[0].tool == "nuclei_segmentation" for r in results)  # type: ignore[attr-defined]
    assert standin.requests == 6
    assert standin.max_in_flight == 2
    assert elapsed >= 3 * 0.3 - 0.05  # three waves of two
    # a higher cap lets them all through at once
    standin.requests = standin.max_in_flight = 0
    planners = [_planner(standin.url, openai_max_concurrency=6, openai_timeout_s=30) for _ in range(6)]
    threads = [threading.Thread(target=p.plan, args=(_ctx(),)) for p in planners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert standin.max_in_flight > 2
