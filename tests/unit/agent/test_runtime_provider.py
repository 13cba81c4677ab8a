"""RuntimeProvider against a scripted ContainerRuntime: the back-off schedule, the
container kept for `logs --previous`, image errors and refusals (tests/integration runs
the same code on real Podman)."""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path

import pytest
from rhizeption_agent import runtime
from rhizeption_agent.provider import ProviderError
from rhizeption_agent.runtime import ImageError, RtContainer, RtPod, RuntimeProvider
from rhizeption_agent.volumes import PodVolumes

UTC = datetime.UTC


class FakeRuntime:
    """Containers that exit at once with EXIT_CODE when started."""

    def __init__(self, exit_code: int = 1, images: tuple[str, ...] = ("img",)) -> None:
        self.exit_code = exit_code
        self.images = set(images)
        self.pods: dict[str, RtPod] = {}
        self.ids = itertools.count()
        self.now = datetime.datetime(2026, 1, 1, tzinfo=UTC)
        self.removed: list[str] = []

    def version(self) -> str:
        return "fake://1"

    def list_pods(self, labels):
        return [p for p in self.pods.values() if all(p.labels.get(k) == v for k, v in labels.items())]

    def pod_ip(self, pod):
        return "10.88.0.9"

    def image_present(self, image):
        return image in self.images

    def pull(self, image):
        raise ImageError("no registry here")

    def create_pod(self, spec):
        pod = RtPod(id=f"pod{next(self.ids)}", name=spec.name, labels=spec.labels)
        self.pods[pod.id] = pod
        return pod

    def remove_pod(self, pod_id):
        self.pods.pop(pod_id, None)

    def create_container(self, pod, spec):
        cid = f"c{next(self.ids)}"
        self.pods[pod.id].containers.append(
            RtContainer(id=cid, labels=spec.labels, state="created", image=spec.image)
        )
        return cid

    def _find(self, cid):
        return next(c for p in self.pods.values() for c in p.containers if c.id == cid)

    def start(self, cid):
        c = self._find(cid)
        c.state, c.exit_code, c.started_at, c.finished_at = "exited", self.exit_code, self.now, self.now

    def stop(self, cid, timeout):
        self._find(cid).state = "exited"

    def remove(self, cid):
        self.removed.append(cid)
        for p in self.pods.values():
            p.containers = [c for c in p.containers if c.id != cid]

    def exec_start(self, cid, command, *, stdin, tty, size=None, timeout=None):
        return FakeExec([(1, b"out\n"), (2, b"err\n")], exit_code=0)

    def logs(self, cid, **kwargs):
        yield b""

    def stats(self, ids):
        return {}


class FakeExec:
    """An exec session that plays OUTPUT, then ends with EXIT_CODE (or raises RAISE)."""

    def __init__(self, output, exit_code=0, raise_=None):
        self.output = list(output)
        self.code = exit_code
        self.raise_ = raise_
        self.closed = False

    def read(self):
        if self.output:
            return self.output.pop(0)
        if self.raise_:
            raise self.raise_
        return None

    def write(self, data):
        pass

    def close_stdin(self):
        pass

    def resize(self, width, height):
        pass

    def exit_code(self):
        return self.code

    def close(self):
        self.closed = True


class NoVolumes:
    def setup(self, pod, pod_ip=""):
        return PodVolumes(root=Path("/nonexistent"))

    def refresh(self, pod, state, pod_ip=""):
        pass

    def teardown(self, uid):
        pass


def pod(image: str = "img", **spec) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "uid-1"},
        "spec": {"containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent"}], **spec},
    }


@pytest.fixture
def clock(monkeypatch):
    """Wall and monotonic time the test moves by hand."""
    now = [1_000_000.0]
    monkeypatch.setattr(runtime.time, "time", lambda: now[0])
    monkeypatch.setattr(runtime.time, "monotonic", lambda: now[0])
    return now


def provider(rt: FakeRuntime) -> RuntimeProvider:
    return RuntimeProvider(rt, NoVolumes(), kube=None, node_name="n", infra_image="pause")  # type: ignore[arg-type]


def test_crash_loop_restarts_at_once_then_after_10_20_40_seconds(clock):
    rt = FakeRuntime(exit_code=1)
    prov = provider(rt)
    events: list[tuple[str, str]] = []

    def emit(_pod, _type, reason, message):
        events.append((reason, message))

    def step():
        rt.now = datetime.datetime.fromtimestamp(clock[0], tz=UTC)
        return prov.sync(pod(), emit)

    step()  # attempt 0 runs and exits
    status = step()  # restarted at once: attempt 1
    assert status["containerStatuses"][0]["restartCount"] == 1
    restarts = []
    for _second in range(200):
        clock[0] += 1
        before = step()["containerStatuses"][0]["restartCount"]
        restarts.append(before)
    # restartCount went 1 -> 2 after 10 s, -> 3 after 20 more, -> 4 after 40 more.
    changes = [i + 1 for i in range(1, len(restarts)) if restarts[i] != restarts[i - 1]]
    assert [b - a for a, b in itertools.pairwise([0, *changes])][:3] == [10, 20, 40]
    waiting = step()["containerStatuses"][0]
    assert waiting["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert waiting["lastState"]["terminated"]["exitCode"] == 1
    assert any(m.startswith("back-off 40s") for r, m in events if r == "BackOff")
    kept = [c for p in rt.pods.values() for c in p.containers]
    assert len(kept) == 2, "the latest run and the one before it; older runs are removed"


def test_never_restart_policy_fails_the_pod(clock):
    rt = FakeRuntime(exit_code=2)
    prov = provider(rt)
    prov.sync(pod(restartPolicy="Never"), lambda *a: None)
    status = prov.sync(pod(restartPolicy="Never"), lambda *a: None)
    assert status["phase"] == "Failed"
    assert status["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"


def test_a_missing_image_is_err_image_pull_then_back_off(clock):
    rt = FakeRuntime(images=())
    prov = provider(rt)
    first = prov.sync(pod(image="missing"), lambda *a: None)
    assert first["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
    assert first["phase"] == "Pending"
    clock[0] += 3
    later = prov.sync(pod(image="missing"), lambda *a: None)
    assert later["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"


def test_an_unsupported_pod_is_failed_and_nothing_runs(clock):
    rt = FakeRuntime()
    prov = provider(rt)
    events = []
    status = prov.sync(pod(hostPID=True), lambda _p, t, r, m: events.append((t, r, m)))
    assert status["phase"] == "Failed"
    assert "spec.hostPID" in status["message"]
    assert not rt.pods
    assert events[0][:2] == ("Warning", "UnsupportedFeature")


def test_exec_probes_run_the_streaming_exec_to_its_end():
    rt = FakeRuntime()
    assert runtime.run_to_end(rt, "c1", ["true"], 1) == (0, b"out\nerr\n")
    late = FakeExec([(1, b"partial ")], raise_=TimeoutError())
    rt.exec_start = lambda *a, **k: late  # type: ignore[method-assign]
    code, out = runtime.run_to_end(rt, "c1", ["sleep", "9"], 1)
    assert code == -1
    assert out == b"partial command timed out after 1s"
    assert late.closed, "the session is dropped, not left open"


def test_exec_refuses_a_container_that_is_not_running(clock):
    rt = FakeRuntime(exit_code=0)
    prov = provider(rt)
    prov.sync(pod(restartPolicy="Never"), lambda *a: None)
    with pytest.raises(ProviderError, match="not running"):
        prov.exec(pod(restartPolicy="Never"), "c", ["sh"], stdin=True, tty=True)
