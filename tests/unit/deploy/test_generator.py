from deploy.generator import CASHIER_EMAIL, Feed, generate, linkable, pairwise


def test_pairwise_precision_and_recall_count_pairs() -> None:
    truth = {"a": "P1", "b": "P1", "c": "P1", "d": "P2"}
    # one wrong merge (c with d), one missed pair split off (a,b together, c apart)
    predicted = {"a": "x", "b": "x", "c": "y", "d": "y"}
    precision, recall = pairwise(predicted, truth)
    assert (precision, recall) == (0.5, 1 / 3)


def test_perfect_and_empty_clusterings() -> None:
    truth = {"a": "P1", "b": "P1", "c": "P2"}
    assert pairwise(dict(truth), truth) == (1.0, 1.0)
    assert pairwise({"a": "1", "b": "2", "c": "3"}, truth) == (1.0, 0.0)


def test_linkable_truth_joins_only_what_shared_identifiers_prove() -> None:
    feed = Feed(
        calls=[],
        truth={"e1": "P1", "e2": "P1", "e3": "P1", "e4": "P2", "e5": "P2"},
        people=2,
        junk={"device_id:000000"},
    )
    ids = {
        "e1": ["member_id:M1", "phone:+861"],
        "e2": ["phone:+861", "email:a@x"],
        "e3": ["email:b@x"],  # nothing links it to e1/e2
        "e4": ["device_id:000000", "member_id:M2"],
        "e5": ["device_id:000000"],  # only junk in common with e4
    }
    clusters = linkable(feed, ids)
    assert clusters["e1"] == clusters["e2"]
    assert len({clusters["e1"], clusters["e3"], clusters["e4"], clusters["e5"]}) == 4


def test_generator_is_seeded_and_covers_the_noise_it_promises() -> None:
    one, again = generate(3, 200), generate(3, 200)
    assert one.truth == again.truth and one.calls == again.calls
    assert len(set(one.truth.values())) <= 200
    bodies = str([body for _, _, body in one.calls])
    assert CASHIER_EMAIL in bodies and "000000" in bodies and "+86 " in bodies
    assert {source for source, _, _ in one.calls} == {
        "demo-pos",
        "demo-app",
        "demo-web",
        "demo-miniprogram",
        "demo-servicedesk",
    }
