"""PodSnapshot: the runtime pods by Pod UID, shared by the Pod workers without a lock held
across a runtime call. What must hold: a worker never sees its own Pod older than its own
last look, and a resync never queues behind another thread's full list."""

from __future__ import annotations

import threading

from rhizeption_agent.runtime import LABEL_UID, PodSnapshot, RtPod


class SlowRuntime:
    """list_pods answers from PODS; a full list (no uid filter) can be held mid-call."""

    def __init__(self) -> None:
        self.pods: dict[str, RtPod] = {}
        self.hold = threading.Event()
        self.hold.set()
        self.listing = threading.Event()
        self.full_lists = 0

    def list_pods(self, labels):
        if LABEL_UID not in labels:
            self.full_lists += 1
            seen = dict(self.pods)  # what the runtime had when the list began
            self.listing.set()
            self.hold.wait(5)
            return list(seen.values())
        return [p for uid, p in self.pods.items() if uid == labels[LABEL_UID]]


def pod(uid: str, containers: int = 0) -> RtPod:
    return RtPod(id=f"p-{uid}", name=uid, labels={LABEL_UID: uid}, containers=[object()] * containers)


def in_thread(call):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", call()))
    t.start()
    return t, out


def test_a_full_list_that_began_before_a_workers_own_look_keeps_the_newer_entry():
    rt = SlowRuntime()
    rt.pods["a"] = pod("a")
    snap = PodSnapshot(rt.list_pods, {})
    rt.hold.clear()
    t, _out = in_thread(lambda: snap.all(fresh=True))
    assert rt.listing.wait(5)
    rt.pods["a"] = pod("a", containers=1)  # the worker starts a container...
    assert len(snap.one("a", fresh=True).containers) == 1  # ...and looks
    rt.hold.set()
    t.join(5)
    assert len(snap.one("a").containers) == 1  # but the snapshot keeps the worker's newer look


def test_a_resync_does_not_wait_for_a_full_list_in_flight():
    rt = SlowRuntime()
    rt.pods["a"] = pod("a")
    snap = PodSnapshot(rt.list_pods, {})
    assert snap.one("a") is not None  # the first list waits for itself
    snap._listed_at -= 10  # stale
    rt.hold.clear()
    rt.listing.clear()
    t, _out = in_thread(lambda: snap.all(fresh=True))
    assert rt.listing.wait(5)
    done = threading.Event()
    threading.Thread(target=lambda: (snap.one("a"), done.set())).start()
    assert done.wait(2), "a resync queued behind the full list"
    rt.hold.set()
    t.join(5)
    assert rt.full_lists == 2


def test_a_forgotten_pod_does_not_come_back_from_an_older_list():
    rt = SlowRuntime()
    rt.pods["a"] = pod("a")
    snap = PodSnapshot(rt.list_pods, {})
    rt.hold.clear()
    t, _out = in_thread(lambda: snap.all(fresh=True))
    assert rt.listing.wait(5)
    del rt.pods["a"]
    snap.forget("a")
    rt.hold.set()
    t.join(5)
    assert snap.one("a") is None
