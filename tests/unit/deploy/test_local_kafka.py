"""The local Kafka's storage format arguments."""

from __future__ import annotations

import base64

from deploy.local.kafka import cluster_id


def test_cluster_ids_never_look_like_an_option() -> None:
    # One raw draw in 64 starts with "-", which Kafka's StorageTool reads as an option: a
    # CI run failed on exactly that. 10,000 draws would hit it with near certainty.
    ids = [cluster_id() for _ in range(10_000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
