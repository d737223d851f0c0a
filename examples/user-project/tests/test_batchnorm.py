"""Our BatchNorm port, checked in our own test suite with xbn's pytest plugin (the ``xbn``
fixture). The frameworks and our known divergences come from pytest.ini."""


def test_port_matches_the_reference(xbn):
    # torch's differing rows are covered by xbn-divergences.toml: the check passes, and the
    # table still holds them with our reason as their explanation
    table = xbn.run("scenarios/port-momentum.toml")
    table.assert_agree()
    assert (table.diffs["verdict"] == "differs").any()


def test_fresh_layer_inference(xbn):
    # a scenario written inline: the same language as the files
    table = xbn.run({
        "schema": 1, "name": "inline-fresh", "layer": {"features": 2},
        "inputs": {"x": [[1.0, -1.0], [3.0, 5.0]]},
        "steps": [{"op": "call", "input": "x", "training": False}],
    })
    assert table.ok, table.summary()
