"""kube.py: paths, API errors, pagination and list+watch waiting, against a fake ApiClient
(this layer only; tests/integration uses the real API server)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import kube
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import HNMACHINE
from kubernetes.client.exceptions import ApiException


class Response:
    def __init__(self, body: object = None, lines: list[dict] | None = None) -> None:
        self.data = json.dumps(body).encode() if body is not None else b""
        self.lines = [json.dumps(line) for line in lines or []]
        self.released = False

    def stream(self, *_args: object, **_kwargs: object) -> Iterator[bytes]:
        yield ("\n".join(self.lines) + "\n").encode()

    def release_conn(self) -> None:
        self.released = True


class Scripted:
    """Answers requests from a script, and records them."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, dict]] = []

    def _answer(self, method: str, path: str, query_params) -> Response:
        self.calls.append((method, path, dict(query_params)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeApi(Scripted):
    """The kubernetes client before 35: call_api(path, method, ...) returns (response,
    status, headers) and raises ApiException."""

    def call_api(self, path, method, query_params=(), header_params=None, body=None, **_kwargs):
        return (self._answer(method, path, query_params), 200, {})


class Answer:
    """What the regenerated client's call_api returns: status, read(), response."""

    def __init__(self, status: int, response: Response | None, error: ApiException | None) -> None:
        self.status, self.response, self.error = status, response, error

    def read(self) -> None:
        pass


class FakeRegeneratedApi(Scripted):
    """The kubernetes client from 35 on (the one requirements pin today): param_serialize
    builds the request, call_api sends it and answers errors without raising, and
    response_deserialize raises them."""

    def param_serialize(
        self, method, resource_path, query_params=(), header_params=None, body=None, **_kwargs
    ):
        return method, (resource_path, list(query_params)), header_params, body, []

    def call_api(self, method, url, header_params=None, body=None, post_params=None, **_kwargs):
        path, query = url
        try:
            return Answer(200, self._answer(method, path, query), None)
        except ApiException as e:
            return Answer(e.status, None, e)

    def response_deserialize(self, answer: Answer, _types: dict) -> None:
        raise answer.error


@pytest.fixture(params=[FakeRegeneratedApi, FakeApi], ids=["client>=35", "client<35"])
def fake(request):
    return request.param


def api_error(status: int, body: str) -> ApiException:
    e = ApiException(
        status=status, reason={404: "Not Found", 422: "Unprocessable Entity", 410: "Gone"}[status]
    )
    e.body = body.encode()
    return e


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({}, "/apis/hn.rhizeption.io/v1alpha1/hnmachines"),
        ({"namespace": "t"}, "/apis/hn.rhizeption.io/v1alpha1/namespaces/t/hnmachines"),
        (
            {"namespace": "t", "name": "m-0", "subresource": "status"},
            "/apis/hn.rhizeption.io/v1alpha1/namespaces/t/hnmachines/m-0/status",
        ),
    ],
)
def test_resource_paths(args, path):
    assert HNMACHINE.path(**args) == path


def test_core_and_cluster_scoped_paths_and_quoting():
    assert kube.POD.path("a b", "x/y") == "/api/v1/namespaces/a%20b/pods/x%2Fy"
    assert kube.NAMESPACE.path("ignored", "ns1") == "/api/v1/namespaces/ns1"


def test_api_errors_keep_the_server_message_and_field_paths(fake):
    status = {
        "kind": "Status",
        "message": 'HnCluster.hn.rhizeption.io "x" is invalid: spec.replicas: Invalid value: -1',
        "reason": "Invalid",
        "details": {"causes": [{"field": "spec.replicas", "message": "Invalid value: -1"}]},
    }
    api = fake([api_error(422, json.dumps(status))])
    with pytest.raises(kube.KubeError) as caught:
        kube.Kube(api).apply("/p", {"kind": "HnCluster"}, what="HnCluster t/x")
    e = caught.value
    assert (
        str(e) == 'HnCluster t/x: HnCluster.hn.rhizeption.io "x" is invalid: spec.replicas: Invalid value: -1'
    )
    assert (e.status, e.reason, e.fields) == (422, "Invalid", ["spec.replicas"])


def test_a_path_the_server_does_not_serve_says_the_crd_may_be_missing(fake):
    api = fake([api_error(404, "404 page not found")])
    with pytest.raises(kube.KubeError, match="does not serve this resource; is its CRD installed"):
        kube.Kube(api).list("/apis/hn.rhizeption.io/v1alpha1/hnmachines")


def test_get_returns_none_for_a_missing_object(fake):
    missing = {"kind": "Status", "message": 'hnmachines "x" not found', "reason": "NotFound"}
    assert kube.Kube(fake([api_error(404, json.dumps(missing))])).get("/x") is None


def test_apply_is_a_forced_server_side_apply_with_dry_run_in_check_mode(fake):
    api = fake([Response({"kind": "HnMachine"})])
    kube.Kube(api).apply("/p", {"kind": "HnMachine"}, dry_run=True)
    method, _path, query = api.calls[0]
    assert method == "PATCH"
    assert query == {"fieldManager": "rhizeption.core", "force": "true", "dryRun": "All"}


def test_list_follows_continue_tokens_and_returns_the_last_version(fake):
    api = fake(
        [
            Response({"metadata": {"continue": "t1", "resourceVersion": "5"}, "items": [{"n": 1}, {"n": 2}]}),
            Response({"metadata": {"resourceVersion": "6"}, "items": [{"n": 3}]}),
        ]
    )
    items, version = kube.Kube(api).list("/x", label_selector="a=b", page_size=2)
    assert [i["n"] for i in items] == [1, 2, 3] and version == "6"
    assert api.calls[0][2] == {"limit": 2, "labelSelector": "a=b"}
    assert api.calls[1][2] == {"limit": 2, "labelSelector": "a=b", "continue": "t1"}


def obj(name: str, version: str, **extra) -> dict:
    return {"metadata": {"name": name, "resourceVersion": version}, **extra}


def test_wait_watches_from_the_list_and_sees_deletions(fake):
    api = fake(
        [
            Response({"metadata": {"resourceVersion": "10"}, "items": [obj("p", "9")]}),
            Response(
                lines=[
                    {"type": "BOOKMARK", "object": obj("", "11")},
                    {"type": "DELETED", "object": obj("p", "12")},
                ]
            ),
        ]
    )
    done, objects = kube.Kube(api).wait("/pods", lambda objs: "p" not in objs, timeout=5)
    assert done is True and objects == {}
    assert api.calls[1][2]["resourceVersion"] == "10"
    assert api.calls[1][2]["watch"] == "true"


def test_wait_lists_again_when_its_version_is_too_old(fake):
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
    api = fake(
        [
            Response({"metadata": {"resourceVersion": "1"}, "items": []}),
            Response(lines=[gone]),
            Response(
                {
                    "metadata": {"resourceVersion": "50"},
                    "items": [obj("p", "49", status={"phase": "Running"})],
                }
            ),
        ]
    )
    seen: list[dict] = []
    done, objects = kube.Kube(api).wait(
        "/pods",
        lambda objs: objs.get("p", {}).get("status", {}).get("phase") == "Running",
        5,
        on_event=seen.append,
    )
    assert done is True and "p" in objects
    assert [m for m, _p, _q in api.calls] == ["GET", "GET", "GET"]
    assert len(seen) == 2  # once per list
